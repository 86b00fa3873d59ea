"""Sends every Segment call type through segment-analytics-python.

Usage: segment_client.py HOST WRITE_KEY
Exits non-zero if the library reports any delivery error.
"""
import sys

from segment.analytics import Client

host, write_key = sys.argv[1], sys.argv[2]
errors = []


def on_error(error, batch):
    errors.append(repr(error))


for gzip in (False, True):
    client = Client(write_key, host=host, gzip=gzip, on_error=on_error, max_retries=2)
    tag = "gz" if gzip else "plain"
    client.track(
        f"py-{tag}-user",
        "Python Track",
        {"n": 1, "tag": tag},
        context={"app": {"version": "5.0.0"}, "ip": "192.0.2.44"},
        message_id=f"py-{tag}-track-1",
    )
    client.page(f"py-{tag}-user", "Docs", "Intro", {"url": "https://py.example/docs?utm_source=py"})
    client.screen(f"py-{tag}-user", "Mobile", "Home")
    client.identify(f"py-{tag}-user", {"email": f"{tag}@py.example"}, anonymous_id=f"py-{tag}-anon")
    client.group(f"py-{tag}-user", f"py-{tag}-group", {"name": "Py Inc"})
    client.alias(f"py-{tag}-old", f"py-{tag}-user")
    for i in range(250):
        client.track(f"py-{tag}-bulk", "Bulk", {"i": i})
    client.flush()
    client.join()

if errors:
    print("delivery errors:", errors)
    sys.exit(1)
print("sent")
