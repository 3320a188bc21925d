"""Detection: heartbeat sensors beside each replica watch its primary and report its health as
events (`sensor`, `probes`), in one schema (`events`), over an event stream (`streams` on Redis,
`kinesis`, picked by `stream_factory`); the same probes as a Nagios plugin (`nagios`); CLI
`detection`.

Not for: deciding what an event means or acting on it (`lazarus_lite` does both).
"""
