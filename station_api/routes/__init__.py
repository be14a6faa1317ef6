"""The station server's routes, one router per audience: ``info`` (open), ``catalog`` (what the station
holds), ``tasks`` (a researcher's rounds) and ``admin``; ``deps`` holds what they share (the server state,
the caller and the role a route needs)."""
