"""Sends every Segment call type through segment-analytics-python.

Usage: segment_client.py HOST WRITE_KEY
Exits non-zero if the library reports any delivery error.
"""
import sys

from segment.analytics import Client

from reporting import finish
from segment_calls import send_all

host, write_key = sys.argv[1], sys.argv[2]
send_all(Client, write_key, host, "py", "Python Track", "5.0.0", "192.0.2.44")
finish()
