"""Sends every call type through RudderStack's rudder-sdk-python.

Usage: rudder_client.py HOST WRITE_KEY
RudderStack speaks Segment's tracking API with its own habits: gzip bodies
by default, an identify's traits only in `context.traits`, and extra fields
(`channel`, `integrations`, page `category`).
Exits non-zero if the library reports any delivery error.
"""
import sys

from rudderstack.analytics import Client

host, write_key = sys.argv[1], sys.argv[2]
errors = []


def on_error(error, batch):
    errors.append(repr(error))


for gzip in (True, False):
    client = Client(write_key, host=host, gzip=gzip, on_error=on_error, max_retries=2)
    tag = "gz" if gzip else "plain"
    user = f"rs-{tag}-user"
    client.track(
        user,
        "Rudder Track",
        {"n": 1, "tag": tag},
        context={"app": {"version": "3.2.1"}, "ip": "198.51.100.77"},
        message_id=f"rs-{tag}-track-1",
    )
    client.page(user, "Docs", "Intro", {"url": "https://rs.example/docs?utm_source=rs"})
    client.screen(user, "Mobile", "Home")
    client.identify(user, {"email": f"{tag}@rs.example"}, anonymous_id=f"rs-{tag}-anon")
    client.group(user, f"rs-{tag}-group", {"name": "Rs Inc"})
    client.alias(f"rs-{tag}-old", user)
    for i in range(250):
        client.track(f"rs-{tag}-bulk", "Bulk", {"i": i})
    client.flush()
    client.join()

if errors:
    print("delivery errors:", errors)
    sys.exit(1)
print("sent")
