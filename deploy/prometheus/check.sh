#!/usr/bin/env bash
# Checks the alert rules: `promtool check rules` (syntax, PromQL) and `promtool test rules`
# (alerts_test.yml: each alert fires, or not, on synthetic series). Fails when promtool is
# missing (Debian: apt-get install prometheus).
set -euo pipefail
cd "$(dirname "$0")"
command -v promtool >/dev/null 2>&1 || {
  echo "check.sh: promtool is missing (Debian: apt-get install prometheus)" >&2
  exit 1
}
promtool check rules alerts.yml
promtool test rules alerts_test.yml
