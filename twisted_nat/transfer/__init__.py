"""
Files between peers: C{twisted-nat send} and C{twisted-nat receive}.

A transfer runs over QUIC streams between the two peers (a control stream
and one stream per file; protocol.py), writes what arrives to part files
renamed only once their SHA-256 checks (disk.py), refuses names that could
leave the output directory (names.py), and resumes what an interrupted
transfer left.  docs/architecture.md and docs/security.md describe it.
"""
