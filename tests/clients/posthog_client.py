"""Sends events, person properties, aliases and groups through posthog-python
(a visitor's event before an alias joins it to a user),
and asks for feature flags (Leanloop answers that there are none).

Usage: posthog_client.py HOST API_KEY
Exits non-zero if the library reports any delivery error.
"""
import logging
import sys
from datetime import datetime, timezone

from posthog import Posthog
from posthog.request import flags

from reporting import errors, finish, on_error

host, api_key = sys.argv[1], sys.argv[2]

for gzip in (False, True):
    tag = "gz" if gzip else "plain"
    ph = Posthog(api_key, host=host, gzip=gzip, on_error=on_error, max_retries=2, enable_local_evaluation=False)
    # A visitor tracked by its own distinct_id before the alias below joins
    # it to the user (the library sends it as an identified id).
    ph.capture("Python Visit", distinct_id=f"ph-{tag}-old", timestamp=datetime(2024, 5, 1, 9, 0, tzinfo=timezone.utc))
    ph.capture(
        "Python Capture",
        distinct_id=f"ph-{tag}-user",
        properties={"$release": "7.0.0", "n": 1},
        timestamp=datetime(2024, 5, 1, 9, 5, tzinfo=timezone.utc),
        uuid="00000000-0000-4000-8000-00000000000" + ("1" if gzip else "2"),
    )
    ph.set(distinct_id=f"ph-{tag}-user", properties={"email": f"{tag}@ph.example"})
    ph.alias(f"ph-{tag}-old", f"ph-{tag}-user")
    ph.group_identify("company", f"acme-{tag}", {"name": "Acme"})
    for i in range(250):
        ph.capture("Bulk", distinct_id=f"ph-{tag}-bulk", properties={"i": i})
    ph.flush()
    ph.shutdown()

# The SDK's own flags call raises on anything but a 200 it can read; the
# client's helpers then fall back to "no flag".
decision = flags(api_key, host, distinct_id="ph-plain-user", max_retries=0)
if decision.get("flags") != {} or decision.get("errorsWhileComputingFlags") is not False:
    errors.append(f"unexpected flags answer: {decision}")
ph = Posthog(api_key, host=host, enable_local_evaluation=False)
if ph.get_feature_flag("beta", "ph-plain-user", send_feature_flag_events=False) is not None or ph.get_all_flags("ph-plain-user") != {}:
    errors.append("a flag came back where none exist")
ph.shutdown()


class LoggedErrors(logging.Handler):
    """The SDK logs, rather than raises, a failed load of flag definitions."""

    def emit(self, record):
        if record.levelno >= logging.ERROR:
            errors.append(record.getMessage())


# With a personal API key the SDK loads flag definitions to evaluate
# locally, and polls for them.
logging.getLogger("posthog").addHandler(LoggedErrors())
ph = Posthog(api_key, host=host, personal_api_key="phx_personal", on_error=on_error)
ph.load_feature_flags()
if ph.feature_flags != [] or ph.get_feature_flag("beta", "ph-plain-user", send_feature_flag_events=False) is not None:
    errors.append(f"flag definitions came back where none exist: {ph.feature_flags}")
ph.shutdown()

finish()
