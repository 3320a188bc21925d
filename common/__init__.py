"""What every package of the testbed shares and none of them owns: reading the files and request
bodies people write (`input_files`, `bounded_yaml`, `bounded_json`) and saying what is wrong with
them (`validation`), a service's settings (`settings`), the roles of a node, the programs they
run and the two loopback addresses (`nodes`), real `redis-server` processes on free ports
(`redis_processes`), a three-member `etcd` cluster on loopback (`etcd_processes`) and an async
etcd v3 client that fails over between its members (`etcd_client`), waiting for an HTTP service
we started to answer (`http_processes`), what an HTTP service answers when it refuses a request
(`http_contract`), durations written as text (`durations`), and every exception of these, in one
tree (`errors`).

Not for: anything that knows about queues, shards, events or experiments; this package imports
nothing of the testbed's own.
"""
