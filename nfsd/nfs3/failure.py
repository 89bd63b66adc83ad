"""The one failure shape of the NFSv3 procedures: what a call learnt before it failed, and the
wrapper that turns the FsError it raised into the procedure's failure reply.

A handler `(s, ctx, args, learnt)` fills in its `Learnt` as it resolves handles and reads
attributes; `procedure(failure)` declares how the XXX3resfail is built from that, as go-nfs
gives each procedure its own error formatter. A body that never waits may be a plain function,
so that the call makes one coroutine (the wrapper's), as before.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

from nfsd.nfs3.common import Nfs3State, Target
from nfsd.rpc.dispatch import CallContext
from nfsd.vfs import acting
from nfsd.vfs.errors import FsError, from_os_error
from nfsd.vfs.tree import Attr
from xdr.codec import Arm
from xdr.nfs3 import fattr3, nfs_fh3, wcc_data


class Learnt:
    """What a call has learnt about the handles in its arguments, in their order: each one's
    fileid once resolved, and its attributes before any change once read (None until then).

    Class attributes are the defaults, so that making one per call costs no __init__.
    """

    fid: int | None = None
    before: Attr | None = None
    second_fid: int | None = None
    second_before: Attr | None = None

    def first_object(self, s: Nfs3State, ctx: CallContext, fh: nfs_fh3) -> tuple[Target, Attr]:
        """Resolve the call's first handle and read its attributes, learning both."""
        target = s.resolve(ctx, fh)
        self.fid = target.fid
        self.before = attr = s.tree.getattr(target.fid)
        return target, attr

    def second_object(self, s: Nfs3State, ctx: CallContext, fh: nfs_fh3) -> tuple[Target, Attr]:
        """The same for its second handle (RENAME's `to` directory, LINK's `link`)."""
        target = s.resolve(ctx, fh)
        self.second_fid = target.fid
        self.second_before = attr = s.tree.getattr(target.fid)
        return target, attr

    def attrs(self, s: Nfs3State) -> fattr3 | None:
        """The first object's attributes now, if it was resolved."""
        return None if self.fid is None else s.post_op(self.fid)

    def wcc(self, s: Nfs3State) -> wcc_data:
        return s.wcc(self.before, self.fid)

    def second_wcc(self, s: Nfs3State) -> wcc_data:
        return s.wcc(self.second_before, self.second_fid)


log = logging.getLogger("realize.nfs3")

Failure = Callable[[Nfs3State, Learnt], Any]
Body = Callable[[Nfs3State, CallContext, Any, Learnt], Any]
Handler = Callable[[Nfs3State, CallContext, Any], Any]


def no_attrs(resfail: type) -> Failure:
    """A failure reply with its post_op_attr left out (ACCESS, FSSTAT, FSINFO, PATHCONF)."""
    return lambda s, learnt: resfail(None)


def first_attrs(resfail: type) -> Failure:
    """A failure reply with the first object's post_op_attr, once it was resolved."""
    return lambda s, learnt: resfail(learnt.attrs(s))


def first_wcc(resfail: type) -> Failure:
    """A failure reply with the wcc_data of the first object (or the directory changed)."""
    return lambda s, learnt: resfail(learnt.wcc(s))


def procedure(failure: Failure | None) -> Callable[[Body], Handler]:
    """Wrap a handler body: an FsError (or OSError) it raises is answered as
    `Arm(status, failure(...))`, the status alone when `failure` is None (GETATTR has no
    failure body). When it ends, however, the server acts as itself again."""

    def wrap(body: Body) -> Handler:
        def failed(s: Nfs3State, learnt: Learnt, e: FsError | OSError) -> Arm:
            if isinstance(e, OSError):
                # Not turned into an FsError on its way (the store's database, a disk
                # failing): still the one errno table's answer, never a server fault.
                log.warning("%s: %s", body.__name__, e)
                e = from_os_error(e)
            return Arm(e.status, None if failure is None else failure(s, learnt))

        if inspect.iscoroutinefunction(body):

            async def run(s: Nfs3State, ctx: CallContext, args: Any) -> Any:
                learnt = Learnt()
                try:
                    return await body(s, ctx, args, learnt)
                except (FsError, OSError) as e:
                    return failed(s, learnt, e)
                finally:
                    acting.act_as_server()

        else:

            async def run(s: Nfs3State, ctx: CallContext, args: Any) -> Any:
                learnt = Learnt()
                try:
                    return body(s, ctx, args, learnt)
                except (FsError, OSError) as e:
                    return failed(s, learnt, e)
                finally:
                    acting.act_as_server()

        return functools.wraps(body)(run)

    return wrap
