#!/bin/sh
# boxd-hook.sh REPO_PATH BOX_PATH
#
# Pluton's onBackupComplete hook for boxd: asks the boxd daemon, over its Unix socket, to mirror
# the plan's restic repository REPO_PATH into the Box folder BOX_PATH (a path under boxd's
# box.root_folder_id, created as needed). It only enqueues: boxd keeps the job in its durable
# queue and uploads it in the background, so the hook returns at once.
#
# On success it prints the job id on stdout (follow it with `boxd show ID`) and a line for
# humans on stderr.
#
# Environment:
#   BOXD_SOCKET           control socket [/run/boxd/boxd.sock]; the user running Pluton needs
#                         write access to it (member of the group boxd)
#   BOXD_IDEMPOTENCY_KEY  key of the job [derived, see below]
#   BOXD_HOOK_TIMEOUT     seconds to wait for boxd's answer [30]
#
# Idempotency: for a restic repository the key is derived from REPO_PATH, BOX_PATH and the names
# in the repository's snapshots/ and index/ directories (content-addressed, so they change with
# every backup and every prune). Running the hook twice for the same repository state returns the
# job already queued instead of enqueueing a second one; if that job failed, its failed files are
# retried. For anything else (an archive, a plain directory) the key also holds the current UTC
# time, so each run enqueues a new job. Pluton passes no run id to its hooks.
#
# Exit status (sysexits.h): 0 job queued (or already queued); 64 wrong arguments; 65 boxd refused
# the job (the message says which field); 66 REPO_PATH does not exist; 69 boxd unreachable (no
# socket, no permission, not running, curl missing); 70 boxd failed internally; 75 try again
# later (boxd busy or slow).
#
# Pluton runs a hook script without arguments; give it a two-line wrapper, e.g.
#   #!/bin/sh
#   exec /usr/local/share/boxd/boxd-hook.sh /srv/restic/plan1 Backups/host1/plan1

set -u

prog=boxd-hook
socket=${BOXD_SOCKET:-/run/boxd/boxd.sock}
timeout=${BOXD_HOOK_TIMEOUT:-30}

say() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() {
	status_=$1
	shift
	say "error: $*"
	exit "$status_"
}
usage() {
	printf 'usage: %s REPO_PATH BOX_PATH\n' "$0"
	printf '  enqueue a boxd mirror job of the restic repository REPO_PATH into the Box folder BOX_PATH\n'
}

# A JSON string literal for $1; paths with control characters are refused before this.
json_string() {
	printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')"
}

# The value of the string field $1 in the one-line JSON object $2 (empty if absent).
json_field() {
	printf '%s' "$2" | sed -n "s/.*\"$1\": *\"\\([^\"]*\\)\".*/\\1/p" | head -n 1
}

has_control_chars() {
	printf '%s' "$1" | LC_ALL=C grep -q '[[:cntrl:]]'
}

digest() {
	if command -v sha256sum >/dev/null 2>&1; then
		sha256sum | cut -c1-32
	else
		cksum | cut -d' ' -f1
	fi
}

# POST to boxd: $1 path, $2 body. Sets $status (HTTP status) and $answer (body); returns curl's
# exit status. curl prints its own one-line reason on stderr when it cannot connect.
post() {
	out=$(printf '%s' "$2" | curl --silent --show-error --max-time "$timeout" \
		--unix-socket "$socket" -X POST -H 'Content-Type: application/json' \
		--data-binary @- -w '\n%{http_code}' "http://boxd$1")
	rc=$?
	status=$(printf '%s\n' "$out" | tail -n 1)
	answer=$(printf '%s\n' "$out" | sed '$d')
	return "$rc"
}

# Turn a failed post into a message and an exit status.
fail_post() {
	rc=$1
	what=$2
	case $rc in
	0) ;;
	7) die 69 "cannot connect to boxd at $socket; is it running? (systemctl status boxd.socket boxd)" ;;
	28) die 75 "boxd did not answer within ${timeout}s ($what); try again later" ;;
	*) die 69 "curl failed with exit status $rc while talking to boxd at $socket ($what)" ;;
	esac
	code=$(json_field code "$answer")
	message=$(json_field message "$answer")
	case $message in *\\) message= ;; esac # cut at an escaped quote: show the whole answer
	detail=${message:-$answer}
	case $status in
	503) die 75 "boxd is busy (HTTP 503, $what): $detail" ;;
	4??) die 65 "boxd refused $what (HTTP $status${code:+ $code}): $detail" ;;
	5??) die 70 "boxd failed on $what (HTTP $status): $detail; see journalctl -u boxd" ;;
	*) die 70 "unexpected answer from boxd to $what (HTTP $status): $answer" ;;
	esac
}

# --- arguments ---------------------------------------------------------------------------------

case ${1:-} in
-h | --help)
	usage
	exit 0
	;;
esac
if [ "$#" -ne 2 ]; then
	usage >&2
	die 64 "expected 2 arguments (REPO_PATH BOX_PATH), got $#"
fi
repo=$1
dest=$2
[ -n "$repo" ] || die 64 "REPO_PATH is empty"
[ -n "$dest" ] || die 64 "BOX_PATH is empty"
if has_control_chars "$repo" || has_control_chars "$dest"; then
	die 64 "REPO_PATH and BOX_PATH must not contain control characters"
fi
[ -e "$repo" ] || die 66 "REPO_PATH $repo does not exist"
[ -r "$repo" ] || die 66 "REPO_PATH $repo is not readable by $(id -un 2>/dev/null || echo this user)"

# boxd wants an absolute source path.
if [ -d "$repo" ]; then
	repo=$(cd -- "$repo" && pwd) || die 66 "cannot enter $repo"
else
	parent=$(cd -- "$(dirname -- "$repo")" && pwd) || die 66 "cannot enter the directory of $repo"
	repo="$parent/$(basename -- "$repo")"
fi

command -v curl >/dev/null 2>&1 || die 69 "curl is not installed (apt-get install curl)"
[ -S "$socket" ] || die 69 "no boxd control socket at $socket; is boxd running (systemctl status boxd.socket boxd)? Set BOXD_SOCKET if it lives elsewhere"
[ -w "$socket" ] || die 69 "no permission to use $socket as $(id -un 2>/dev/null || echo this user); add this user to the socket's group (usermod -aG boxd USER)"

# --- idempotency key ---------------------------------------------------------------------------

key=${BOXD_IDEMPOTENCY_KEY:-}
if [ -z "$key" ]; then
	if [ -d "$repo/snapshots" ] && [ -d "$repo/index" ]; then
		state=$(LC_ALL=C ls -1 -- "$repo/snapshots" "$repo/index" 2>/dev/null)
		key="pluton-restic-$(printf '%s\n%s\n%s\n' "$repo" "$dest" "$state" | digest)"
	else
		stamp=$(date -u +%Y%m%dT%H%M%SZ)
		key="pluton-$stamp-$(printf '%s\n%s\n' "$repo" "$dest" | digest)"
	fi
fi

# --- enqueue -----------------------------------------------------------------------------------

body="{\"source\": $(json_string "$repo"), \"destination\": $(json_string "$dest"), \"mode\": \"mirror\", \"idempotency_key\": $(json_string "$key")}"
post /v1/jobs "$body"
rc=$?
case "$rc:$status" in
0:202)
	id=$(json_field id "$answer")
	[ -n "$id" ] || die 70 "boxd accepted the job but its answer has no id: $answer"
	say "job $id queued: mirror $repo to Box folder $dest (key $key)"
	printf '%s\n' "$id"
	exit 0
	;;
0:200)
	id=$(json_field id "$answer")
	state=$(json_field state "$answer")
	[ -n "$id" ] || die 70 "boxd answered without a job id: $answer"
	case $state in
	failed)
		post "/v1/jobs/$id/retry" ""
		fail=$?
		[ "$fail:$status" = "0:200" ] || [ "$fail:$status" = "0:202" ] || fail_post "$fail" "the retry of job $id"
		say "job $id for this repository state had failed; its failed files are queued again"
		;;
	cancelled)
		die 65 "job $id for this repository state was cancelled; set BOXD_IDEMPOTENCY_KEY to a new value to enqueue it again"
		;;
	*)
		say "job $id for this repository state already exists ($state); nothing new to enqueue"
		;;
	esac
	printf '%s\n' "$id"
	exit 0
	;;
*)
	fail_post "$rc" "the job"
	;;
esac
