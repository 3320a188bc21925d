"""What every package of the testbed shares and none of them owns: reading the files and request
bodies people write (`input_files`, `bounded_yaml`, `bounded_json`) and saying what is wrong with
them (`validation`).

Not for: anything that knows about queues, shards, events or experiments; this package imports
nothing of the testbed's own.
"""
