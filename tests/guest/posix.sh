#!/bin/sh
# POSIX behaviour checks on a mounted file system, written for busybox sh in the test guest
# (tests/support/qemu_guest.py boots it; tests/support/kernel_mount.py runs this file).
#
# usage: posix.sh DIR [nfs|reference|smoke]
#   DIR        a directory on the file system under test; the checks work in DIR/posix.<pid>
#              and remove it at the end
#   nfs        (default) every check
#   reference  every check, run on a local file system (the guest's tmpfs) to prove that the
#              expected values below are right for a local disk
#   smoke      a short subset: write, read, append, mkdir -p, rename, listing, df, rm -rf
#
# Prints "ok NAME" or "FAIL NAME: details" for every check and carries on after a failure.
# Exit status: the number of failed checks. Needs the guest helpers xrename and xcreate
# (tests/guest/guesttool.c) and root (for /proc/sys/vm/drop_caches).

base=${1:?usage: posix.sh DIR [nfs|reference|smoke]}
mode=${2:-nfs}
case $mode in nfs|reference|smoke) ;; *) echo "posix.sh: unknown mode $mode" >&2; exit 99 ;; esac

W=$base/posix.$$        # work directory on the file system under test
T=/tmp/posix-scratch.$$ # scratch space on the guest's own tmpfs (never the tree under test)
umask 022
fails=0
checks=0
cur=
err=

# ---- helpers -------------------------------------------------------------------------------

bad() { err="${err:+$err; }$*"; }
# eq WHAT GOT WANT
eq() { [ "$2" = "$3" ] || bad "$1: got '$2', want '$3'"; }
# num WHAT GOT WANT   (numeric compare; tolerates the padding some tools print)
num() {
    if [ -n "$2" ] && [ "$2" -eq "$3" ] 2>/dev/null; then :; else bad "$1: got '$2', want $3"; fi
}
size() { stat -c %s "$1" 2>/dev/null || echo missing; }
# near WHAT EPOCH: EPOCH (e.g. an mtime) is within two minutes of the guest's clock
near() {
    local _now
    _now=$(date +%s)
    case $2 in
        '' | *[!0-9]*) bad "$1: got '$2', want about $_now" ;;
        *) [ $(($2 - _now)) -ge -120 ] && [ $(($2 - _now)) -le 120 ] ||
            bad "$1: got $2, guest clock says $_now" ;;
    esac
}
count() { local _n; _n=$(wc -c); echo $((_n)); }   # byte count of stdin, no padding
lines() { local _n; _n=$(wc -l); echo $((_n)); }   # line count of stdin, no padding
md5() { set -- $(md5sum); echo "$1"; }             # md5 of stdin
nonzero() { tr -d '\000' | count; }               # how many non-NUL bytes on stdin
dropcaches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || :; }
hexname() { printf %s "$1" | od -An -tx1 | tr -d ' \n'; }

# Wait (up to 10 s) until DIR lists nothing but the given names; the NFS client removes the
# .nfsXXXX file of a silly-renamed (unlinked while open) file shortly after the last close.
settle() {
    local _d _want _got _i _x
    _d=$1
    shift
    _want=$(for _x in "$@"; do echo "$_x"; done | sort)
    _i=0
    while [ $_i -lt 50 ]; do
        _got=$(ls -A "$_d" | sort)
        [ "$_got" = "$_want" ] && return 0
        usleep 200000
        _i=$((_i + 1))
    done
    bad "directory $_d still lists: $(echo $_got)"
}

# run NAME: run t_NAME in a subshell, in a fresh directory W/NAME, then print the verdict.
# The subshell keeps a check that dies of a shell error from taking the others with it.
run() {
    cur=$1
    t0=$(date +%s)
    rm -f "$T/verdict"
    (
        err=
        if mkdir "$W/$cur" && cd "$W/$cur"; then
            "t_$cur"
        else
            bad "cannot make work directory $W/$cur"
        fi
        printf '%s' "$err" > "$T/verdict"
    )
    status=$?
    cd "$W" 2>/dev/null || cd /
    if [ -f "$T/verdict" ]; then
        err=$(cat "$T/verdict")
    else
        err="the check died of a shell error (exit status $status)"
    fi
    dt=$(($(date +%s) - t0))
    took=
    [ $dt -ge 2 ] && took=" (${dt}s)"
    checks=$((checks + 1))
    if [ -z "$err" ]; then
        echo "ok $cur$took"
    else
        echo "FAIL $cur: $err"
        fails=$((fails + 1))
    fi
}

# ---- checks --------------------------------------------------------------------------------

t_write() {
    printf 'hello, world\n' > f || bad "write failed"
    num size "$(size f)" 13
    eq content "$(cat f)" "hello, world"
    dropcaches
    eq content-after-dropcaches "$(cat f)" "hello, world"
}

t_read() {
    printf '0123456789abcdefghij' > f
    dropcaches
    eq whole "$(cat f)" 0123456789abcdefghij
    eq middle "$(dd if=f bs=1 skip=10 count=6 2>/dev/null)" abcdef
    eq head "$(head -c 3 f)" 012
    eq tail "$(tail -c 4 f)" ghij
    eq past-eof "$(dd if=f bs=1 skip=30 count=5 2>/dev/null | count)" 0
}

t_append() {
    printf 'one\n' > f
    printf 'two\n' >> f
    echo three >> f
    dropcaches
    eq content "$(cat f)" "$(printf 'one\ntwo\nthree')"
    num size "$(size f)" 14
    num lines "$(lines < f)" 3
}

t_overwrite() {
    printf 'a rather long first version\n' > f
    printf 'short\n' > f
    dropcaches
    eq shorter "$(cat f)" short
    num size "$(size f)" 6
    printf 'XY' | dd of=f conv=notrunc 2>/dev/null
    dropcaches
    eq in-place "$(cat f)" XYort
    num size-after-in-place "$(size f)" 6
}

t_bigcopy() {
    src=$T/big
    dd if=/dev/urandom of="$src" bs=1048576 count=50 2>/dev/null || bad "cannot make source"
    want=$(md5 < "$src")
    cp "$src" big || bad "cp to the tree failed"
    dropcaches
    num size "$(size big)" 52428800
    eq checksum "$(md5 < big)" "$want"
    cp big "$T/back" || bad "cp from the tree failed"
    eq checksum-of-copy-back "$(md5 < "$T/back")" "$want"
    rm -f "$src" "$T/back"
}

t_truncate() {
    printf 'abcdefghij' > f
    truncate -s 4 f || bad "truncate down failed"
    num size-down "$(size f)" 4
    eq content-down "$(cat f)" abcd
    truncate -s 10 f || bad "truncate up failed"
    num size-up "$(size f)" 10
    dropcaches
    eq kept "$(head -c 4 f)" abcd
    eq extension "$(tail -c 6 f | od -An -tx1 | tr -d ' \n')" 000000000000
    truncate -s 0 f
    num size-zero "$(size f)" 0
    eq empty "$(cat f)" ""
}

t_sparse() {
    # 3 bytes at 100 MiB: a 100 MiB hole before them
    printf 'END' | dd of=f bs=1048576 seek=100 2>/dev/null || bad "write at offset failed"
    num size "$(size f)" 104857603
    dropcaches
    eq tail "$(tail -c 3 f)" END
    num hole-start-nonzero "$(head -c 65536 f | nonzero)" 0
    num hole-middle-length "$(dd if=f bs=1048576 skip=50 count=1 2>/dev/null | count)" 1048576
    num hole-middle-nonzero "$(dd if=f bs=1048576 skip=50 count=1 2>/dev/null | nonzero)" 0
    # fill a few bytes inside the hole; the size must not change
    printf 'MID' | dd of=f bs=1 seek=5000000 conv=notrunc 2>/dev/null
    dropcaches
    eq mid "$(dd if=f bs=1 skip=5000000 count=3 2>/dev/null)" MID
    num size-unchanged "$(size f)" 104857603
    truncate -s 1073741824 g || bad "truncate -s 1G failed"
    num size-1g "$(size g)" 1073741824
    num tail-1g-nonzero "$(tail -c 4096 g | nonzero)" 0
    echo "info sparse: 100 MiB file uses $(stat -c %b f) blocks of 512 bytes," \
        "1 GiB hole uses $(stat -c %b g)"
}

t_mkdir_p() {
    mkdir -p a/b/c || bad "mkdir -p failed"
    [ -d a/b/c ] || bad "a/b/c is not a directory"
    eq level1 "$(ls a)" b
    eq level2 "$(ls a/b)" c
    eq level3 "$(ls -A a/b/c)" ""
    mkdir -p a/b/c || bad "mkdir -p of an existing path failed"
    mkdir a 2>/dev/null && bad "mkdir of an existing directory succeeded"
    echo x > a/b/c/f || bad "create in the deepest level failed"
    eq deep-file "$(cat a/b/c/f)" x
}

t_rename_file() {
    echo payload > old
    ino=$(stat -c %i old)
    mv old new || bad "mv failed"
    [ -e old ] && bad "old name still exists"
    eq content "$(cat new)" payload
    eq inode-kept "$(stat -c %i new)" "$ino"
    mkdir sub
    mv new sub/moved || bad "mv to another directory failed"
    [ -e new ] && bad "name still in the first directory"
    eq moved-content "$(cat sub/moved)" payload
    eq moved-inode "$(stat -c %i sub/moved)" "$ino"
    dropcaches
    eq listing "$(ls)" sub
    eq sub-listing "$(ls sub)" moved
}

t_rename_open_dir() {
    mkdir d1
    echo content > d1/file
    exec 3< d1/file
    exec 4>> d1/file
    mv d1 d2 || bad "rename of the parent failed"
    [ -e d1 ] && bad "old directory name still exists"
    eq via-open-fd "$(cat <&3)" content
    echo more >&4 || bad "write via the open fd failed"
    exec 4>&-
    exec 3<&-
    dropcaches
    eq via-new-path "$(cat d2/file)" "$(printf 'content\nmore')"
    eq listing "$(ls)" d2
}

t_rename_over_file() {
    echo A > a
    echo B > b
    exec 3< b
    mv a b || bad "mv over an existing file failed"
    [ -e a ] && bad "source name still exists"
    eq target-content "$(cat b)" A
    eq replaced-via-open-fd "$(cat <&3)" B
    exec 3<&-
    settle . b
    dropcaches
    eq after-dropcaches "$(cat b)" A
}

t_rename_dir_over_dir() {
    mkdir src dst
    echo x > src/inner
    out=$(xrename src dst 2>&1) || bad "rename over an empty directory failed: $out"
    [ -e src ] && bad "source directory still exists"
    eq moved-content "$(cat dst/inner 2>&1)" x
    mkdir s2 full
    echo y > full/keep
    out=$(xrename s2 full 2>&1) && bad "rename over a non-empty directory succeeded"
    case $out in
        *ENOTEMPTY* | *EEXIST*) ;;
        *) bad "rename over a non-empty directory: $out" ;;
    esac
    [ -d s2 ] || bad "source lost after the failed rename"
    eq target-kept "$(cat full/keep)" y
    : > plain
    out=$(xrename s2 plain 2>&1) && bad "rename of a directory over a file succeeded"
    case $out in *ENOTDIR*) ;; *) bad "directory over file: $out" ;; esac
    out=$(xrename plain s2 2>&1) && bad "rename of a file over a directory succeeded"
    case $out in *EISDIR*) ;; *) bad "file over directory: $out" ;; esac
    out=$(xrename dst dst/sub 2>&1) && bad "rename of a directory into itself succeeded"
    case $out in *EINVAL*) ;; *) bad "directory into itself: $out" ;; esac
    eq listing "$(ls | tr '\n' ' ')" "dst full plain s2 "
}

t_rmdir_nonempty() {
    mkdir d
    : > d/f
    out=$(rmdir d 2>&1) && bad "rmdir of a non-empty directory succeeded"
    case $out in *"not empty"*) ;; *) bad "want ENOTEMPTY, got: $out" ;; esac
    [ -e d/f ] || bad "content gone after the failed rmdir"
    rm d/f
    rmdir d || bad "rmdir of the emptied directory failed"
    [ -e d ] && bad "directory still exists"
    eq listing "$(ls -A)" ""
}

t_hardlink() {
    echo data > f
    num nlink-1 "$(stat -c %h f)" 1
    ln f h || bad "ln failed"
    num nlink-2 "$(stat -c %h f)" 2
    num nlink-2-other-name "$(stat -c %h h)" 2
    eq same-inode "$(stat -c %i h)" "$(stat -c %i f)"
    mkdir sub
    ln f sub/h2 || bad "ln into another directory failed"
    num nlink-3 "$(stat -c %h f)" 3
    echo more >> h
    eq shared-content "$(cat f)" "$(printf 'data\nmore')"
    rm f
    num nlink-after-rm "$(stat -c %h h)" 2
    dropcaches
    num nlink-after-dropcaches "$(stat -c %h sub/h2)" 2
    rm sub/h2
    num nlink-last "$(stat -c %h h)" 1
    eq content-last "$(cat h)" "$(printf 'data\nmore')"
    ln h h 2>/dev/null && bad "ln onto an existing name succeeded"
    ln sub sublink 2>/dev/null && bad "hard link to a directory succeeded"
    eq listing "$(ls | tr '\n' ' ')" "h sub "
}

t_symlink() {
    echo target-data > target
    ln -s target l || bad "ln -s failed"
    eq readlink "$(readlink l)" target
    eq follow "$(cat l)" target-data
    eq type "$(stat -c %F l)" "symbolic link"
    eq type-followed "$(stat -L -c %F l)" "regular file"
    [ -L l ] || bad "[ -L ] false"
    ln -s does-not-exist dl || bad "dangling ln -s failed"
    eq dangling-readlink "$(readlink dl)" does-not-exist
    [ -L dl ] || bad "dangling: [ -L ] false"
    [ -e dl ] && bad "dangling link resolves"
    cat dl 2>/dev/null && bad "read through a dangling link succeeded"
    echo now > does-not-exist
    eq dangling-then-created "$(cat dl)" now
    mkdir dir
    echo inner > dir/x
    ln -s dir ldir
    eq follow-dir "$(cat ldir/x)" inner
    eq list-through-link "$(ls ldir/)" x
    mkdir sub
    ln -s ../target sub/up
    eq relative "$(cat sub/up)" target-data
    long=$(head -c 200 /dev/zero | tr '\0' x)/$(head -c 200 /dev/zero | tr '\0' y)
    ln -s "$long" longl
    eq long-target "$(readlink longl)" "$long"
    ln -s /an/absolute/path abs
    eq absolute "$(readlink abs)" /an/absolute/path
    ln -s target l 2>/dev/null && bad "ln -s onto an existing name succeeded"
    rm l
    eq target-survives "$(cat target)" target-data
    dropcaches
    eq readlink-after-dropcaches "$(readlink sub/up)" ../target
}

t_chmod() {
    echo x > f
    for m in 640 755 600 444 0 4755 2750; do
        chmod "$m" f || bad "chmod $m failed"
        eq "file mode $m" "$(stat -c %a f)" "$m"
    done
    mkdir d
    for m in 700 1777 755; do
        chmod "$m" d || bad "chmod $m on a directory failed"
        eq "dir mode $m" "$(stat -c %a d)" "$m"
    done
    chmod 640 f
    dropcaches
    eq after-dropcaches "$(stat -c %a f)" 640
    eq type-kept "$(stat -c %F f)" "regular file"
}

t_mtime() {
    echo x > f
    touch -d '2001-02-03 04:05:06' f || bad "touch -d failed"
    eq touch-d "$(stat -c %Y f)" 981173106
    touch -t 199912312359.59 f || bad "touch -t failed"
    eq touch-t "$(stat -c %Y f)" 946684799
    touch -m -d '2030-01-01 00:00:00' f
    eq future "$(stat -c %Y f)" 1893456000
    touch -t 199912312359.59 f
    dropcaches
    eq after-dropcaches "$(stat -c %Y f)" 946684799
    echo more >> f
    near "mtime after a write" "$(stat -c %Y f)"
    mkdir d
    touch -d '2001-02-03 04:05:06' d
    : > d/new
    near "directory mtime after a create" "$(stat -c %Y d)"
}

t_excl_create() {
    echo original > existing
    (set -C; echo x > existing) 2>/dev/null && bad "noclobber overwrote an existing file"
    eq unchanged "$(cat existing)" original
    (set -C; echo new > fresh) || bad "noclobber create of a new file failed"
    eq fresh "$(cat fresh)" new
    out=$(xcreate existing 2>&1) && bad "O_EXCL create of an existing file succeeded"
    case $out in *EEXIST*) ;; *) bad "O_EXCL on existing: $out" ;; esac
    out=$(xcreate brand-new 2>&1) || bad "O_EXCL create of a new file failed: $out"
    [ -f brand-new ] || bad "O_EXCL-created file missing"
    num size "$(size brand-new)" 0
    eq mode "$(stat -c %a brand-new)" 644
    dropcaches
    near "mtime of the O_EXCL-created file" "$(stat -c %Y brand-new)"
    out=$(xcreate brand-new 2>&1) && bad "second O_EXCL create of the same name succeeded"
    case $out in *EEXIST*) ;; *) bad "second O_EXCL: $out" ;; esac
}

t_fifo() {
    mkfifo p || bad "mkfifo failed"
    eq type "$(stat -c %F p)" fifo
    [ -p p ] || bad "[ -p ] false"
    (echo through-the-fifo > p) &
    writer=$!
    eq data "$(timeout 20 cat p)" through-the-fifo
    kill $writer 2>/dev/null
    wait $writer 2>/dev/null
    dropcaches
    eq type-after-dropcaches "$(stat -c %F p)" fifo
    rm p || bad "rm of the fifo failed"
    eq listing "$(ls -A)" ""
}

t_nonascii() {
    n1=$(printf 'caf\303\251')                            # café
    n2=$(printf '\346\227\245\346\234\254\350\252\236')   # 日本語
    n3=$(printf 'emoji-\360\237\230\200')                 # emoji-😀
    for n in "$n1" "$n2" "$n3"; do
        printf '%s' "$n" > "$n" || bad "create of $(hexname "$n") failed"
    done
    mkdir "$n2.d" && : > "$n2.d/$n1" || bad "non-ASCII directory failed"
    dropcaches
    seen=0
    for f in *; do
        case $f in
            "$n1" | "$n2" | "$n3" | "$n2.d") seen=$((seen + 1)) ;;
            *) bad "unexpected name in the listing: $(hexname "$f")" ;;
        esac
    done
    num listed "$seen" 4
    for n in "$n1" "$n2" "$n3"; do
        eq "content of $(hexname "$n")" "$(cat "$n")" "$n"
    done
    for f in "$n2.d"/*; do eq nested "$f" "$n2.d/$n1"; done
    mv "$n1" "$n1-2" || bad "rename of a non-ASCII name failed"
    [ -e "$n1-2" ] && [ ! -e "$n1" ] || bad "rename of a non-ASCII name lost it"
}

t_non_utf8_name() {
    # POSIX names are bytes: a Latin-1 byte sequence that is not valid UTF-8
    n=$(printf 'latin1-\351t\351')
    echo data > "$n" || bad "create failed"
    dropcaches
    found=
    for f in *; do
        if [ "$f" = "$n" ]; then found=1; else bad "listed as $(hexname "$f")"; fi
    done
    [ -n "$found" ] || bad "not listed"
    eq content "$(cat "$n")" data
    rm "$n" || bad "rm failed"
    eq listing "$(ls -A)" ""
}

t_name_max() {
    n255=$(head -c 255 /dev/zero | tr '\0' a)
    echo ok > "$n255" || bad "255-byte name rejected"
    eq read-255 "$(cat "$n255")" ok
    for f in *; do num listed-length "$(printf %s "$f" | count)" 255; done
    out=$(xcreate "${n255}b" 2>&1) && bad "256-byte name accepted"
    case $out in *ENAMETOOLONG*) ;; *) bad "256-byte create: $out" ;; esac
    out=$(mkdir "${n255}c" 2>&1) && bad "256-byte directory name accepted"
    case $out in *"too long"*) ;; *) bad "256-byte mkdir: $out" ;; esac
    # 85 three-byte characters = 255 bytes; 86 = 258 bytes
    u85=
    i=0
    while [ $i -lt 85 ]; do u85="$u85$(printf '\342\202\254')"; i=$((i + 1)); done
    : > "$u85" || bad "255-byte UTF-8 name rejected"
    out=$(xcreate "$u85$(printf '\342\202\254')" 2>&1) && bad "258-byte UTF-8 name accepted"
    case $out in *ENAMETOOLONG*) ;; *) bad "258-byte create: $out" ;; esac
    set -- *
    num entries "$#" 2
}

t_bigdir() {
    n=5000
    i=1
    while [ $i -le $n ]; do
        : > "entry-with-a-longish-name-$i" || { bad "create of entry $i failed"; break; }
        i=$((i + 1))
    done
    i=1
    while [ $i -le $n ]; do echo "entry-with-a-longish-name-$i"; i=$((i + 1)); done |
        sort > "$T/want-all"
    ls -1 | sort > "$T/got"
    num count "$(lines < "$T/got")" $n
    cmp -s "$T/want-all" "$T/got" ||
        bad "listing differs: $(diff "$T/want-all" "$T/got" | grep '^[-+]e' | head -3 | tr '\n' ' ')"
    dropcaches
    ls -1 | sort > "$T/got"
    cmp -s "$T/want-all" "$T/got" || bad "listing after dropcaches differs"
    set -- *
    num glob-count "$#" $n
    # delete the even half with one rm
    rm -- *[02468] || bad "rm of the even half failed"
    grep '[13579]$' "$T/want-all" > "$T/want-odd"
    ls -1 | sort > "$T/got"
    num count-after-delete "$(lines < "$T/got")" $((n / 2))
    cmp -s "$T/want-odd" "$T/got" ||
        bad "listing after delete differs: $(diff "$T/want-odd" "$T/got" | grep '^[-+]e' | head -3 | tr '\n' ' ')"
    dropcaches
    ls -1 | sort > "$T/got"
    cmp -s "$T/want-odd" "$T/got" || bad "listing after delete and dropcaches differs"
    num unique "$(sort -u "$T/got" | lines)" $((n / 2))
    rm -f "$T/want-all" "$T/want-odd" "$T/got"
}

t_concurrent() {
    k=1
    while [ $k -le 4 ]; do
        (i=1; while [ $i -le 300 ]; do echo "writer $k line $i" >> "w$k"; i=$((i + 1)); done) &
        head -c 262144 /dev/urandom > "$T/pat$k"
        k=$((k + 1))
    done
    # four writers, each on its own 256 KiB region of one file
    k=1
    while [ $k -le 4 ]; do
        dd if="$T/pat$k" of=shared bs=262144 seek=$((k - 1)) count=1 conv=notrunc 2>/dev/null &
        k=$((k + 1))
    done
    # four writers interleaving 4 KiB blocks of another file
    k=1
    while [ $k -le 4 ]; do
        head -c 4096 /dev/zero | tr '\0' "$(printf "\\$((100 + k))")" > "$T/blk$k"
        (j=0; while [ $j -lt 32 ]; do
            dd if="$T/blk$k" of=interleaved bs=4096 seek=$((j * 4 + k - 1)) count=1 \
                conv=notrunc 2>/dev/null
            j=$((j + 1))
        done) &
        k=$((k + 1))
    done
    wait
    dropcaches
    k=1
    while [ $k -le 4 ]; do
        i=1
        while [ $i -le 300 ]; do echo "writer $k line $i"; i=$((i + 1)); done > "$T/want"
        cmp -s "$T/want" "w$k" || bad "w$k differs ($(lines < "w$k") lines)"
        eq "region $k" "$(dd if=shared bs=262144 skip=$((k - 1)) count=1 2>/dev/null | md5)" \
            "$(md5 < "$T/pat$k")"
        k=$((k + 1))
    done
    num shared-size "$(size shared)" 1048576
    j=0
    while [ $j -lt 32 ]; do
        cat "$T/blk1" "$T/blk2" "$T/blk3" "$T/blk4"
        j=$((j + 1))
    done > "$T/want"
    num interleaved-size "$(size interleaved)" 524288
    cmp -s "$T/want" interleaved || bad "interleaved blocks differ"
    rm -f "$T"/pat? "$T"/blk? "$T/want"
}

t_df() {
    out=$(df -P -k "$base" 2>&1) || bad "df failed: $out"
    set -- $(echo "$out" | awk 'END { print $(NF-4), $(NF-3), $(NF-2) }')
    total=$1 used=$2 avail=$3
    [ "$total" -gt 1024 ] 2>/dev/null || bad "total size $total KiB"
    [ "$used" -ge 0 ] 2>/dev/null && [ "$used" -le "$total" ] || bad "used $used of $total KiB"
    [ "$avail" -ge 0 ] 2>/dev/null && [ "$avail" -le "$total" ] || bad "available $avail of $total KiB"
    echo "info df: total ${total} KiB, used ${used} KiB, available ${avail} KiB"
}

t_unlinked_open() {
    echo secret > u
    exec 3< u
    echo kept > w
    exec 4>> w
    rm u w || bad "rm failed"
    [ -e u ] && bad "name still visible after rm"
    eq read-via-fd "$(cat <&3)" secret
    echo written-after-unlink >&4 || bad "write to the unlinked file failed"
    exec 3<&-
    exec 4>&-
    eq listing "$(ls)" ""
    settle .
}

t_rm_rf() {
    mkdir -p tree/a/b/c tree/d/e
    i=0
    while [ $i -lt 50 ]; do echo $i > "tree/a/f$i"; echo $i > "tree/d/e/g$i"; i=$((i + 1)); done
    head -c 3000000 /dev/zero > tree/a/b/c/big
    ln -s ../d tree/a/link
    ln -s nowhere tree/dangling
    ln tree/a/f1 tree/d/hard
    mkfifo tree/d/fifo
    rm -rf tree || bad "rm -rf failed"
    [ -e tree ] && bad "tree still exists"
    eq listing "$(ls -A)" ""
}

# ---- main ----------------------------------------------------------------------------------

mkdir -p "$T" || { echo "FAIL setup: cannot make $T"; exit 1; }
if ! mkdir "$W"; then
    echo "FAIL setup: cannot make work directory $W"
    exit 1
fi
echo "info posix.sh mode=$mode dir=$W"

if [ "$mode" = smoke ]; then
    set -- write read append overwrite mkdir_p rename_file rmdir_nonempty symlink df rm_rf
else
    set -- write read append overwrite bigcopy truncate sparse mkdir_p rename_file \
        rename_open_dir rename_over_file rename_dir_over_dir rmdir_nonempty hardlink symlink \
        chmod mtime excl_create fifo nonascii non_utf8_name name_max bigdir concurrent df \
        unlinked_open rm_rf
fi
for c in "$@"; do run "$c"; done

# the last check: the whole work directory goes away and nothing is left of it
cur=cleanup
err=
cd /
rm -rf "$W" || bad "rm -rf of the work directory failed"
[ -e "$W" ] && bad "work directory still exists"
for f in "$base"/posix.$$*; do [ -e "$f" ] && bad "left behind: $f"; done
checks=$((checks + 1))
if [ -z "$err" ]; then echo "ok $cur"; else echo "FAIL $cur: $err"; fails=$((fails + 1)); fi
rm -rf "$T"

echo "info posix.sh: $checks checks, $fails failed"
exit $fails
