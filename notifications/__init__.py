"""Notifications: a service's messages to its Slack, PagerDuty and email channels. `notifier`
sends them (the sensors page through it), `config` reads which team and channels a service
uses, `delivery` is the record and the bounded retry every send shares, and `slack`,
`pagerduty` and `mail` are the channels.

Not for: deciding anything, or the pager policy that holds a page until its acknowledgement
deadline (the controller runs it: `lazarus_lite.paging`).
"""
