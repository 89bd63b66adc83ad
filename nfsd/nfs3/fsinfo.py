"""FSSTAT, FSINFO and PATHCONF: what the file system is and how big it is."""

from __future__ import annotations

from nfsd.nfs3.common import MAX_FILE_SIZE, Nfs3State, max_io
from nfsd.nfs3.failure import Learnt, no_attrs, procedure
from nfsd.rpc.dispatch import CallContext
from xdr.codec import Arm
from xdr.nfs3 import (
    FSF3_CANSETTIME,
    FSF3_HOMOGENEOUS,
    FSF3_LINK,
    FSF3_SYMLINK,
    NAME_MAX,
    FSINFO3args,
    FSINFO3resfail,
    FSINFO3resok,
    FSSTAT3args,
    FSSTAT3resfail,
    FSSTAT3resok,
    PATHCONF3args,
    PATHCONF3resfail,
    PATHCONF3resok,
    nfsstat3,
    nfstime3,
)

OK = nfsstat3.NFS3_OK
# Directory reads of 64 KiB: smaller ones multiply round trips for large directories.
DTPREF = 64 * 1024


@procedure(no_attrs(FSSTAT3resfail))
def fsstat(s: Nfs3State, ctx: CallContext, args: FSSTAT3args, learnt: Learnt) -> Arm:
    target = s.resolve(ctx, args.fsroot)
    st = s.tree.fsstat(target.fid)
    return Arm(
        OK,
        FSSTAT3resok(
            s.post_op(target.fid),
            st.total_bytes,
            st.free_bytes,
            st.avail_bytes,
            st.total_files,
            st.free_files,
            st.avail_files,
            0,
        ),
    )


@procedure(no_attrs(FSINFO3resfail))
def fsinfo(s: Nfs3State, ctx: CallContext, args: FSINFO3args, learnt: Learnt) -> Arm:
    target = s.resolve(ctx, args.fsroot)
    io_max = max_io(ctx)  # 1 MiB over TCP, what one datagram holds over UDP
    return Arm(
        OK,
        FSINFO3resok(
            s.post_op(target.fid),
            rtmax=io_max,
            rtpref=io_max,
            rtmult=4096,
            wtmax=io_max,
            wtpref=io_max,
            wtmult=4096,
            dtpref=min(DTPREF, io_max),
            maxfilesize=MAX_FILE_SIZE,
            time_delta=nfstime3(0, 1),
            properties=FSF3_LINK | FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME,
        ),
    )


@procedure(no_attrs(PATHCONF3resfail))
def pathconf(s: Nfs3State, ctx: CallContext, args: PATHCONF3args, learnt: Learnt) -> Arm:
    target = s.resolve(ctx, args.object)
    return Arm(
        OK,
        PATHCONF3resok(
            s.post_op(target.fid),
            linkmax=65000,
            name_max=NAME_MAX,
            no_trunc=True,
            chown_restricted=True,
            case_insensitive=False,
            case_preserving=True,
        ),
    )
