#!/usr/bin/env bash
# apt-install.sh HINT PACKAGE...: install the Debian PACKAGEs not installed yet, with apt-get
# (through sudo unless root). Without apt-get, print HINT (what to do instead) and succeed.
set -euo pipefail
hint="$1"
shift
missing=()
for package in "$@"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
[ "${#missing[@]}" -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "$(basename "$0"): no apt-get here to install ${missing[*]}; $hint" >&2
    exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
$sudo apt-get install -y -qq "${missing[@]}" >/dev/null
