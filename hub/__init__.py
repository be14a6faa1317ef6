"""The hub: a relay between coordinators and stations behind firewalls (:mod:`.app`), its persistent
queue (:mod:`.queue`) and its ``hub.toml`` (:mod:`.config`). It carries sealed envelopes
(:mod:`better.wire.envelope`) it cannot open."""
