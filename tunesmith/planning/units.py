"""Byte counts as people read them."""

GIB = 2 ** 30


def human(nbytes: float) -> str:
    return f"{nbytes / GIB:.2f} GiB" if nbytes >= GIB / 4 else f"{nbytes / 2 ** 20:.0f} MiB"
