"""What every package of the testbed shares and none of them owns: reading the files and request
bodies people write (`input_files`, `bounded_yaml`, `bounded_json`) and saying what is wrong with
them (`validation`), a service's settings and their one error (`settings`), the roles of a node,
the programs they run and the two loopback addresses (`nodes`), and real `redis-server`
processes on free ports (`redis_processes`), and what an HTTP service answers when it refuses a
request (`service_errors`, `http_contract`), durations written as text (`durations`).

Not for: anything that knows about queues, shards, events or experiments; this package imports
nothing of the testbed's own.
"""
