"""Sends events through posthog-python's v1 capture protocol
(`capture_mode="v1"`: `/i/v1/analytics/events`, Bearer key, an answer per
event) with each of its compressions, and LLM events through `capture_ai`
(`/i/v0/ai/batch/`). One event over Leanloop's event size limit must come
back dropped, by its uuid, and nothing else.

Usage: posthog_v1_client.py HOST API_KEY
Exits non-zero if the library reports anything but that one drop.
"""
import sys
from datetime import datetime, timezone

from posthog import Posthog

from reporting import errors, finish

host, api_key = sys.argv[1], sys.argv[2]
TOO_BIG = "00000000-0000-4000-8000-0000000000ff"
dropped = []


def on_error(error, batch):
    drops = getattr(error, "drops", None)
    if drops and all(uuid == TOO_BIG for uuid, _ in drops):
        dropped.extend(drops)
    else:
        errors.append(repr(error))


for compression in ("none", "gzip", "deflate"):
    ph = Posthog(
        api_key,
        host=host,
        capture_mode="v1",
        capture_compression=compression,
        on_error=on_error,
        max_retries=2,
        enable_local_evaluation=False,
    )
    user = f"v1-{compression}-user"
    ph.capture(
        "V1 Capture",
        distinct_id=user,
        properties={"$release": "8.0.0", "$session_id": f"s-{compression}", "n": 1, "$set": {"plan": compression}},
        timestamp=datetime(2024, 6, 1, 9, 0, tzinfo=timezone.utc),
    )
    for i in range(120):
        ph.capture("V1 Bulk", distinct_id=user, properties={"i": i})
    if compression == "none":
        ph.capture("V1 Too Big", distinct_id=user, properties={"blob": "x" * 40_000}, uuid=TOO_BIG)
        # Sent as the v1 option `process_person_profile`: the person keeps its plan.
        ph.capture(
            "V1 Personless",
            distinct_id=user,
            properties={"$process_person_profile": False, "$set": {"plan": "personless"}},
        )
    ph.capture_ai(
        "$ai_generation",
        distinct_id=user,
        properties={"$ai_model": "small-1", "$ai_input_tokens": 12, "$ai_output_tokens": 30},
    )
    ph.flush()
    ph.shutdown()

if [uuid for uuid, _ in dropped] != [TOO_BIG]:
    errors.append(f"the oversized event was not dropped once by its uuid: {dropped}")
elif "32" not in (dropped[0][1] or ""):
    errors.append(f"the drop does not say why: {dropped}")
finish()
