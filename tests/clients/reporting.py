"""What the client scripts share: the errors an SDK reports, collected, and
an exit status that fails the test when there were any."""
import sys

errors = []


def on_error(error, batch):
    errors.append(repr(error))


def finish():
    if errors:
        print("delivery errors:", errors)
        sys.exit(1)
    print("sent")
