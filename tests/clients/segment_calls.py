"""Every Segment call type through an SDK with analytics-python's interface
(Segment's own, and RudderStack's, which copies it): per tag, plain and
gzip-compressed, a track, page, screen, identify, group and alias under
`{prefix}-{tag}-…` ids, then 250 tracks."""
from reporting import on_error


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
