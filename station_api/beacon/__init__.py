"""The station's GA4GH Beacon v2 (``/beacon``): requests, answers through the station's own tasks and
policy, and the Beacon's documents (see ``docs/beacon.md``)."""
