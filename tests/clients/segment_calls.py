"""Every Segment call type through an SDK with analytics-python's interface
(Segment's own, and RudderStack's, which copies it): per tag, plain and
gzip-compressed, a track, page, screen, identify, group and alias under
`{prefix}-{tag}-…` ids, then 250 tracks; then one track with a key the
server refuses, which the SDK must read as a refusal."""
from reporting import errors, on_error


def send_all(client_class, write_key, host, prefix, track_name, release, ip):
    for gzip in (False, True):
        client = client_class(write_key, host=host, gzip=gzip, on_error=on_error, max_retries=2)
        tag = "gz" if gzip else "plain"
        user = f"{prefix}-{tag}-user"
        client.track(
            user,
            track_name,
            {"n": 1, "tag": tag},
            context={"app": {"version": release}, "ip": ip},
            message_id=f"{prefix}-{tag}-track-1",
        )
        client.page(user, "Docs", "Intro", {"url": f"https://{prefix}.example/docs?utm_source={prefix}"})
        client.screen(user, "Mobile", "Home")
        client.identify(user, {"email": f"{tag}@{prefix}.example"}, anonymous_id=f"{prefix}-{tag}-anon")
        client.group(user, f"{prefix}-{tag}-group", {"name": "Example Inc"})
        client.alias(f"{prefix}-{tag}-old", user)
        for i in range(250):
            client.track(f"{prefix}-{tag}-bulk", "Bulk", {"i": i})
        client.flush()
        client.join()
    check_refusal(client_class, write_key, host)


def check_refusal(client_class, write_key, host):
    """A 401 the SDK understands: its APIError with the status and code,
    which it gives up on at once. An answer it cannot read would be
    retried as a network failure and reported as something else."""
    refused = []
    client = client_class(write_key + "-revoked", host=host, max_retries=2,
                          on_error=lambda error, batch: refused.append(error))
    client.track("refused-user", "Refused")
    client.flush()
    client.join()
    understood = (len(refused) == 1 and type(refused[0]).__name__ == "APIError"
                  and refused[0].status == 401 and refused[0].code == "unauthorized"
                  and "write key" in refused[0].message)
    if not understood:
        errors.append(f"a refusal read as {refused!r}")
