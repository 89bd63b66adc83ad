#!/bin/sh
# Server-restart phase for the test guest (busybox sh): the NFS server restarts while this
# client holds an open file and keeps a stream of operations going on a hard mount.
#
# usage: restart.sh DIR      (DIR on an NFS mount; the phase works in DIR/restart.<pid>)
#
# Talks to the host over the console: prints "HOST-ACTION: restart-server", then reads one line
# from stdin (the console); the host answers "HOST-DONE: ok" once the server is back. Meanwhile
# a background loop keeps appending to a file and stat'ing another, so operations are in flight
# (and block, on a hard mount) while the server is down.
# Prints "ok NAME" / "FAIL NAME: details"; exit status = number of failed checks.

base=${1:?usage: restart.sh DIR}
D=$base/restart.$$
STOP=/tmp/restart-stop.$$
TICKS=/tmp/restart-ticks.$$
fails=0
err=

bad() { err="${err:+$err; }$*"; }
eq() { [ "$2" = "$3" ] || bad "$1: got '$2', want '$3'"; }
verdict() {
    if [ -z "$err" ]; then echo "ok $1"; else echo "FAIL $1: $err"; fails=$((fails + 1)); fi
    err=
}
dropcaches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || :; }
ticks() {  # operations the background loop has completed so far
    local _t
    _t=$(cat "$TICKS" 2>/dev/null)
    case $_t in '' | *[!0-9]*) echo 0 ;; *) echo "$_t" ;; esac
}

# ---- before ----
mkdir "$D" || { echo "FAIL setup: cannot make $D"; exit 1; }
i=1
while [ $i -le 20 ]; do echo "entry $i" > "$D/e$i"; i=$((i + 1)); done
printf 'before-restart\n' > "$D/file"
ino=$(stat -c %i "$D/file")
exec 3<> "$D/file"
want_listing=$(ls "$D" | sort)

rm -f "$STOP" "$TICKS"
(
    n=0
    while [ ! -e "$STOP" ]; do
        n=$((n + 1))
        read -r up _ < /proc/uptime
        echo "tick $n $up" >> "$D/ticks" && stat "$D/file" > /dev/null && echo $n > "$TICKS.new" && mv "$TICKS.new" "$TICKS"
        usleep 100000
    done
) &
bg=$!
i=0
while [ "$(ticks)" -lt 3 ] && [ $i -lt 100 ]; do usleep 100000; i=$((i + 1)); done
[ "$(ticks)" -ge 3 ] || bad "background operations did not start"
verdict before-restart

# ---- restart ----
stty -echo 2>/dev/null
echo "HOST-ACTION: restart-server"
read -r reply
stty echo 2>/dev/null
at_reply=$(ticks)
eq "host answer" "$reply" "HOST-DONE: ok"
verdict host-restart

# ---- after ----
t0=$(date +%s)
while [ "$(ticks)" -lt $((at_reply + 5)) ] && [ $(($(date +%s) - t0)) -lt 120 ]; do
    usleep 200000
done
[ "$(ticks)" -ge $((at_reply + 5)) ] ||
    bad "background operations stuck at $(ticks) for $(($(date +%s) - t0)) s after the restart"
verdict operations-resume

eq read-via-open-fd "$(cat <&3)" before-restart
echo after-restart >&3 || bad "write via the open fd failed"
exec 3>&-
dropcaches
eq content "$(cat "$D/file")" "$(printf 'before-restart\nafter-restart')"
eq inode "$(stat -c %i "$D/file")" "$ino"
verdict open-file-survives

eq listing "$(ls "$D" | grep -v '^ticks$' | sort)" "$want_listing"
eq entry "$(cat "$D/e7")" "entry 7"
verdict directory-survives

echo new > "$D/new" || bad "create failed"
mv "$D/new" "$D/renamed" || bad "rename failed"
eq renamed "$(cat "$D/renamed")" new
mkdir "$D/sub" || bad "mkdir failed"
rm "$D/renamed" && rmdir "$D/sub" || bad "remove failed"
verdict new-operations

touch "$STOP"
wait $bg
n=$(ticks)
awk -v n="$n" '
    $1 != "tick" || $2 != NR { bad = "line " NR " is \"" $0 "\""; exit }
    NR > 1 && $3 - last > gap { gap = $3 - last }
    { last = $3 }
    END {
        if (bad == "" && NR != n) bad = NR " lines, want " n
        if (bad != "") { print "FAIL"; print bad } else printf "%.1f\n", gap
    }' "$D/ticks" > /tmp/restart-awk.$$
if [ "$(head -n 1 /tmp/restart-awk.$$)" = FAIL ]; then
    bad "ticks file: $(tail -n 1 /tmp/restart-awk.$$)"
else
    echo "info $n background operations; longest stall $(cat /tmp/restart-awk.$$) s"
fi
verdict background-log

rm -rf "$D" || bad "rm -rf failed"
[ -e "$D" ] && bad "directory still exists"
verdict cleanup
rm -f "$STOP" "$TICKS" "$TICKS.new" /tmp/restart-awk.$$
exit $fails
