#!/usr/bin/env python3
"""Writes a generated nrdot configuration for the scale benchmark (issue 24).

HOSTS hosts x PREFIXES path prefixes, each route splitting 90/10 between two pools, plus a
catch-all route: HOSTS * PREFIXES + 1 routes. Every route name is distinct and every host
appears PREFIXES times, as on a platform hosting many applications.

    python3 benches/scale/gen.py --hosts 10000 --prefixes 10 > /tmp/100k.toml
"""
import argparse
import sys


def config(hosts, prefixes, listen="127.0.0.1:8000", admin="127.0.0.1:8080",
           state_dir="/tmp/nrdot-scale", origin="127.0.0.1:9000", workers=2):
    out = [
        f'state_dir = "{state_dir}"\nworker_threads = {workers}\n',
        f'[admin]\nbind = "{admin}"\n',
        f'[[listener]]\nname = "http"\nbind = "{listen}"\n',
        "[access_log]\nenabled = false\n",
    ]
    for pool in ("blue", "green"):
        out.append(f'[[pool]]\nname = "{pool}"\n[[pool.server]]\naddress = "{origin}"\n')
    for h in range(hosts):
        for p in range(prefixes):
            out.append(
                f'[[route]]\nname = "app{h}-p{p}"\nhost = "app{h}.example.com"\n'
                f'path = "/svc{p}/"\n'
                'split = [{ pool = "blue", weight = 90 }, { pool = "green", weight = 10 }]\n'
            )
    out.append('[[route]]\nname = "default"\npool = "blue"\n')
    return "\n".join(out)


def main():
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--hosts", type=int, default=1000)
    a.add_argument("--prefixes", type=int, default=10)
    a.add_argument("--listen", default="127.0.0.1:8000")
    a.add_argument("--admin", default="127.0.0.1:8080")
    a.add_argument("--state-dir", default="/tmp/nrdot-scale")
    a.add_argument("--origin", default="127.0.0.1:9000")
    args = a.parse_args()
    sys.stdout.write(config(args.hosts, args.prefixes, args.listen, args.admin,
                            args.state_dir, args.origin))


if __name__ == "__main__":
    main()
