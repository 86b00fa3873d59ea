"""Sends events, person properties, aliases and groups through posthog-python.

Usage: posthog_client.py HOST API_KEY
Exits non-zero if the library reports any delivery error.
"""
import sys

from posthog import Posthog

host, api_key = sys.argv[1], sys.argv[2]
errors = []


def on_error(error, batch):
    errors.append(repr(error))


for gzip in (False, True):
    tag = "gz" if gzip else "plain"
    ph = Posthog(api_key, host=host, gzip=gzip, on_error=on_error, max_retries=2, enable_local_evaluation=False)
    ph.capture(
        "Python Capture",
        distinct_id=f"ph-{tag}-user",
        properties={"$release": "7.0.0", "n": 1},
        uuid="00000000-0000-4000-8000-00000000000" + ("1" if gzip else "2"),
    )
    ph.set(distinct_id=f"ph-{tag}-user", properties={"email": f"{tag}@ph.example"})
    ph.alias(f"ph-{tag}-old", f"ph-{tag}-user")
    ph.group_identify("company", f"acme-{tag}", {"name": "Acme"})
    for i in range(250):
        ph.capture("Bulk", distinct_id=f"ph-{tag}-bulk", properties={"i": i})
    ph.flush()
    ph.shutdown()

if errors:
    print("delivery errors:", errors)
    sys.exit(1)
print("sent")
