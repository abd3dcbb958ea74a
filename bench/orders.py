#!/usr/bin/env python3
"""Orders for `identity-reconciliation import`, as NDJSON (or CSV) on stdout.

    python3 bench/orders.py --orders 1000000 [--seed 1] [--start 2025-06-01T00:00:00Z]
                            [--prefix r] [--csv] > orders.ndjson

The mix of bench/batch.sh: 60 % new customers (a fresh email and a fresh phone),
30 % repeats (the exact email and phone of an earlier new customer), 10 % links
and merges (the email of one earlier customer with the phone of another). The
first two orders are always new customers, so that a link has two to join.

Line i (from 1) is ordered at --start + i milliseconds, written like
2025-06-01T00:00:00.001Z, so orderedAt rises strictly through the file.

Customer k's values are derived from k alone (email `<prefix><k>@orders.test`,
phone `9<ccc><k, 9 digits>` with ccc three digits from a CRC of the prefix, or
--phone-prefix), so no list of customers is kept and memory stays constant
whatever --orders is. Repeats and links draw an earlier customer half of the
time from the most recent --window (200 000) customers, where returning
customers cluster, and half of the time uniformly from all earlier ones. Two
different --prefix values give disjoint emails and, but for a 1-in-1000 clash
of their CRC digits (use --phone-prefix to rule it out), disjoint phones; the
phones never collide with bench/prefill.sql's, which start with 5. The service
lower-cases emails, so prefixes that differ only in case share their emails.
"""
import argparse
import datetime
import random
import re
import sys
import time
import zlib

CHUNK = 10_000  # lines written per write() call


def parse_start(text):
    """--start as whole milliseconds since the epoch (UTC)."""
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 timestamp: {text!r} ({err})")
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"--start needs a time zone (Z or +hh:mm): {text!r}")
    if moment.microsecond % 1000:
        raise argparse.ArgumentTypeError(f"--start must be whole milliseconds: {text!r}")
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
    delta = moment - epoch
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, required=True, help="lines to write")
    parser.add_argument("--seed", type=int, default=1, help="random seed (1)")
    parser.add_argument("--start", type=parse_start, default=parse_start("2025-06-01T00:00:00Z"),
                        help="the first line is ordered 1 ms after this (2025-06-01T00:00:00Z)")
    parser.add_argument("--prefix", default="r",
                        help="email local-part prefix, letters, digits, '.', '_', '-' (r)")
    parser.add_argument("--phone-prefix", default=None,
                        help="digits every phone starts with (9 and three digits from --prefix)")
    parser.add_argument("--window", type=int, default=200_000,
                        help="recent customers half the repeats and links come from (200000)")
    parser.add_argument("--csv", action="store_true",
                        help="CSV with the header email,phoneNumber,orderedAt instead of NDJSON")
    args = parser.parse_args()
    if args.orders < 0:
        parser.error("--orders must be 0 or more")
    if args.window < 2:
        parser.error("--window must be at least 2")
    # Only characters that need no escaping in JSON or CSV and are valid in an email.
    if not re.fullmatch(r"[A-Za-z0-9._-]+", args.prefix):
        parser.error("--prefix may hold only letters, digits, '.', '_' and '-'")
    if args.phone_prefix is None:
        args.phone_prefix = f"9{zlib.crc32(args.prefix.encode()) % 1000:03d}"
    elif not re.fullmatch(r"[1-9][0-9]*", args.phone_prefix):
        parser.error("--phone-prefix must be digits, not starting with 0")
    if len(args.phone_prefix) + max(9, len(str(args.orders))) > 20:
        parser.error("--phone-prefix too long: phones may have at most 20 digits")
    return args


def generate(args, out):
    rng = random.Random(args.seed)
    draw = rng.random
    window = args.window
    prefix, phone_prefix = args.prefix, args.phone_prefix
    if args.csv:
        out.write("email,phoneNumber,orderedAt\n")
        line = "{0}{1}@orders.test,{2}{3:09d},{4}.{5:03d}Z\n".format
    else:
        line = ('{{"email":"{0}{1}@orders.test","phoneNumber":"{2}{3:09d}",'
                '"orderedAt":"{4}.{5:03d}Z"}}\n').format

    def pick(customers):
        """An earlier customer: half recent, half from all of them."""
        if customers > window and draw() < 0.5:
            return customers - 1 - int(draw() * window)
        return int(draw() * customers)

    customers = 0  # new customers so far; customer k is 0 <= k < customers
    millis = args.start
    second = None
    stamp = ""
    lines = []
    for _ in range(args.orders):
        millis += 1
        whole, ms = divmod(millis, 1000)
        if whole != second:
            second = whole
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        roll = draw()
        if roll < 0.6 or customers < 2:
            k = customers
            customers += 1
            lines.append(line(prefix, k, phone_prefix, k, stamp, ms))
        elif roll < 0.9:
            k = pick(customers)
            lines.append(line(prefix, k, phone_prefix, k, stamp, ms))
        else:
            a = pick(customers)
            b = pick(customers)
            while b == a:
                b = pick(customers)
            lines.append(line(prefix, a, phone_prefix, b, stamp, ms))
        if len(lines) >= CHUNK:
            out.write("".join(lines))
            lines.clear()
    out.write("".join(lines))


def main():
    args = arguments()
    try:
        generate(args, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        # A reader that stopped early (`| head`): not an error of ours.
        sys.stderr.close()
        sys.exit(0)


if __name__ == "__main__":
    main()
