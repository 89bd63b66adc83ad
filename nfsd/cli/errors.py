"""The mistake a user makes in what they ask `realize`: printed as one sentence, exit status 2,
never a traceback."""


class UsageError(Exception):
    """A mistake in what the user asked; printed without a traceback."""
