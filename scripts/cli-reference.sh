#!/usr/bin/env bash
# Prints the CLI reference (every command's --help) as Markdown, for the README.
set -euo pipefail
cd "$(dirname "$0")/.."
k() { node bin/kiln.js "$@"; }
echo '```'
k --help
echo '```'
for c in build pull push copy inspect images rmi login logout bootstrap; do
  printf '\n### kiln %s\n\n```\n' "$c"
  k "$c" --help
  echo '```'
done
for c in dump lint stages; do
  printf '\n### kiln dockerfile %s\n\n```\n' "$c"
  k dockerfile "$c" --help
  echo '```'
done
