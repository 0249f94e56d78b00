"""
Prometheus metrics for operators (C{twistd nat server --metrics ENDPOINT}):
counters and gauges read from the objects that already count, at each
scrape, so that nothing is counted twice and nothing costs anything
between scrapes.  Label values come from small fixed sets (reasons written
in the code, never names, keys or addresses), so the series stay bounded
whatever the traffic.  Needs the optional C{prometheus-client}
(C{pip install 'twisted-nat[metrics]'}); this package imports without it.
"""
