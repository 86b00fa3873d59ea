"""Sends every call type through RudderStack's rudder-sdk-python.

Usage: rudder_client.py HOST WRITE_KEY
RudderStack speaks Segment's tracking API with its own habits: gzip bodies
by default, an identify's traits only in `context.traits`, and extra fields
(`channel`, `integrations`, page `category`).
Exits non-zero if the library reports any delivery error.
"""
import sys

from rudderstack.analytics import Client

from reporting import finish
from segment_calls import send_all

host, write_key = sys.argv[1], sys.argv[2]
send_all(Client, write_key, host, "rs", "Rudder Track", "3.2.1", "198.51.100.77")
finish()
