"""The PromQL of docs/deploy/grafana-dashboard.json as Prometheus recording rules,
so that `promtool check rules` parses every panel's query (tests/run.sh):
Grafana's $__rate_interval becomes 5m and $instance matches every replica.
  python3 tests/deploy/dashboard_rules.py docs/deploy/grafana-dashboard.json > rules.json
"""
import json, sys
def exprs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr" and isinstance(v, str):
                yield v
            else:
                yield from exprs(v)
    elif isinstance(node, list):
        for v in node:
            yield from exprs(v)
found = list(exprs(json.load(open(sys.argv[1]))))
assert found, "no expr in the dashboard"
rules = [{"record": f"dashboard:panel_{i}", "expr": e.replace("$__rate_interval", "5m").replace("$instance", ".*")}
         for i, e in enumerate(found)]
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, sys.stdout)
