"""The controller node's HTTP routes, one module an area, each a FastAPI `APIRouter` of thin
handlers over the node's typed parts (`context.NodeApi`): event intake and the audit trail
(`events`), workflows and their approval gates (`workflows`), the peer endpoint of the quorum
(`quorum`), the safety gates' switches and states (`gates`), and health (`health`).
`lazarus_lite.service.create_app` mounts them in that order.

Not for: decisions (`lazarus_lite.controller`), the error contract (`common.http_contract`).
"""
