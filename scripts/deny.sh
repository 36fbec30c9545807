#!/usr/bin/env bash
# cargo deny (advisories, licenses, bans, sources; deny.toml) against the RustSec advisory
# database snapshot in supply-chain/advisory-db. The build machines reach package registries
# only, so the database travels with the repository; supply-chain/README.md says how to
# refresh it. Installs cargo-deny when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q "$DENY_VERSION"; then
  echo "installing cargo-deny $DENY_VERSION"
  # Unoptimized: its own speed does not matter here (seconds), an optimized build takes minutes.
  cargo install cargo-deny --locked --debug --version "$DENY_VERSION"
fi

snapshot=supply-chain/advisory-db
commit=$(awk '$1 == "commit" { print $2 }' "$snapshot/SNAPSHOT")
date=$(awk '$1 == "date" { print $2 }' "$snapshot/SNAPSHOT")
age_days=$(( ($(date +%s) - $(date -d "$date" +%s)) / 86400 ))
echo "advisory database: RustSec at ${commit:0:12}, $date ($age_days days old)"
# deny.toml's maximum-db-staleness (180 days) fails the check past it; warn half-way.
if (( age_days > 90 )); then
  echo "warning: the advisory database snapshot is over 90 days old; refresh it (supply-chain/README.md)" >&2
fi

# cargo deny opens the database as a git repository (it reads the date of its HEAD) in a
# folder named after the database URL; the snapshot becomes one commit dated as the original.
dbs=$(mktemp -d)
trap 'rm -rf "$dbs"' EXIT
db="$dbs/advisory-db-3157b0e258782691"
cp -r "$snapshot" "$db"
git -C "$db" init -q
git -C "$db" add -A
GIT_AUTHOR_DATE="$date" GIT_COMMITTER_DATE="$date" \
  git -C "$db" -c user.name=custos -c user.email=custos@localhost commit -q -m "RustSec advisory-db $commit"
# cargo deny dates an unfetched database by its HEAD commit or the time .git/HEAD was
# written, whichever is later: the fresh repository must not look new.
touch -d "$date" "$db/.git/HEAD" "$db/.git/FETCH_HEAD"

# cargo metadata (run by cargo deny) needs every target's packages, downloaded here first so
# that the check itself runs offline.
cargo fetch --locked --quiet
CUSTOS_ADVISORY_DBS="$dbs" cargo deny --offline --locked check
