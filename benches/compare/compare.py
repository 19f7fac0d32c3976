"""Quiver side by side with the tools users would otherwise pick, in one run, on one machine.

Run through `benches/compare/run.sh`, which prepares the environments and the binaries.
Each section generates its data once (fixed seeds), writes it for both sides, runs peer and
Quiver alternately (`--reps` times, keeping each side's best time) and prints one line per
comparison with both figures and the ratio. All traffic stays on 127.0.0.1. Results also go
to target/compare/results.json.
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "target" / "compare"
RESULTS = []
# Timed runs per side and call where a side keeps its best (quiver_side.rs's `BEST_OF`).
BEST_OF = 5


def installed(package):
    """`package version`, as installed in the environment that runs it."""
    from importlib.metadata import version

    return f"{package} {version(package)}"


def report(name, peer, peer_value, quiver_value, unit, higher_is_better=True, note=""):
    """One comparison line: both figures and how many times better Quiver is."""
    ratio = quiver_value / peer_value if higher_is_better else peer_value / quiver_value
    print(
        f"{name:<44} {peer:<26} {peer_value:>12.4g} {unit:<10} quiver {quiver_value:>12.4g} {unit:<10}"
        f" quiver/peer x{ratio:.2f} {note}",
        flush=True,
    )
    RESULTS.append(
        dict(name=name, peer=peer, peer_value=peer_value, quiver_value=quiver_value, unit=unit,
             higher_is_better=higher_is_better, quiver_advantage=ratio, note=note)
    )


def quiver_side(args, *mode):
    out = subprocess.run([args.quiver_side, *mode], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- Contextual bandit stream: Vowpal Wabbit and MABWiser ---------------------------------

def make_stream(rows, features, arms, seed):
    """Dense contexts and a Bernoulli reward per arm drawn up front, so the realized reward
    depends only on the chosen arm: both sides play the same stream."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, features)) / np.sqrt(features)
    theta = rng.normal(scale=1.5, size=(features, arms))
    intercept = rng.normal(scale=0.5, size=arms)
    p = 1 / (1 + np.exp(-(x @ theta + intercept)))
    rewards = (rng.random((rows, arms)) < p).astype(float)
    return x, rewards, p


def write_stream(path, x, rewards):
    frame = pd.DataFrame({f"f_{j}": x[:, j] for j in range(x.shape[1])})
    for a in range(rewards.shape[1]):
        frame[f"quality|a{a}"] = rewards[:, a]
    frame.to_parquet(path, index=False)


def vw_stream(x, rewards, flags, seed):
    """VW's online loop through its Python binding, as its contextual-bandit tutorial runs
    it: predict a PMF over the actions, sample, learn the chosen action's cost."""
    import vowpalwabbit

    arms = rewards.shape[1]
    shared = ["shared |s " + " ".join(f"f{j}:{v:.9g}" for j, v in enumerate(row)) for row in x]
    actions = [f"|a a{a}" for a in range(arms)]
    vw = vowpalwabbit.Workspace(f"--cb_explore_adf -q sa --quiet --random_seed {seed} {flags}")
    rng = np.random.default_rng(seed)
    total = 0.0
    started = time.perf_counter()
    for i, s in enumerate(shared):
        pmf = np.asarray(vw.predict([s] + actions))
        a = int(rng.choice(arms, p=pmf / pmf.sum()))
        r = rewards[i, a]
        total += r
        labelled = [s] + [
            f"0:{-r}:{pmf[k]} {actions[k]}" if k == a else actions[k] for k in range(arms)
        ]
        vw.learn(labelled)
    seconds = time.perf_counter() - started
    vw.finish()
    return dict(seconds=seconds, examples_per_s=len(shared) / seconds, progressive_reward=total / len(shared))


def mabwiser_stream(x, rewards, policy, seed):
    """MABWiser online: one predict and one partial_fit per example, after a first fit on
    one round of every arm."""
    from mabwiser.mab import MAB, LearningPolicy

    arms = list(range(rewards.shape[1]))
    contextual = policy != "ts"
    # Its ridge of 1 against Quiver's 10: the same work per example, another model.
    learning = LearningPolicy.LinUCB(alpha=0.5, l2_lambda=1.0) if contextual else LearningPolicy.ThompsonSampling()
    mab = MAB(arms, learning, seed=seed)
    ctx = np.hstack([np.ones((len(x), 1)), x])
    warm = len(arms)
    mab.fit(arms, rewards[np.arange(warm), arms], ctx[:warm] if contextual else None)
    total = 0.0
    started = time.perf_counter()
    for i in range(warm, len(x)):
        a = mab.predict(ctx[i : i + 1]) if contextual else mab.predict()
        r = rewards[i, a]
        total += r
        mab.partial_fit([a], [r], ctx[i : i + 1] if contextual else None)
    seconds = time.perf_counter() - started
    n = len(x) - warm
    return dict(seconds=seconds, examples_per_s=n / seconds, progressive_reward=total / n)


def best(runs):
    return min(runs, key=lambda r: r["seconds"])


def section_vw(args):
    rows = args.vw_rows
    x, rewards, p = make_stream(rows, 63, 11, seed=7)
    path = OUT / "cb_stream.parquet"
    write_stream(path, x, rewards)
    print(f"# VW vs Quiver: {rows} examples, d = 64 (bias + 63 dense features), K = 11; "
          f"best fixed arm {p.mean(axis=0).max():.3f}, per-example oracle {p.max(axis=1).mean():.3f}")
    pairs = [
        ("vw --cb_explore_adf -q sa --epsilon 0.05", "--epsilon 0.05", "linucb(alpha=0.5)"),
        ("vw --cb_explore_adf -q sa --squarecb", "--squarecb --gamma_scale 10", "lints(v=0.1)"),
        ("vw --cb_explore_adf -q sa --squarecb", "--squarecb --gamma_scale 10", "lints(v=0.1,draws=256)"),
    ]
    for label, flags, spec in pairs:
        peer, ours = [], []
        for _ in range(args.reps):
            peer.append(vw_stream(x, rewards, flags, seed=1))
            ours.append(quiver_side(args, "stream", str(path), spec))
        p_best, q_best = best(peer), best(ours)
        report(f"cb stream examples/s: {spec}", label, p_best["examples_per_s"], q_best["examples_per_s"], "ex/s")
        report(f"cb stream progressive reward: {spec}", label, p_best["progressive_reward"],
               q_best["progressive_reward"], "reward")


def section_mabwiser(args):
    rows = args.mab_rows
    x, rewards, _ = make_stream(rows, 63, 11, seed=7)
    path = OUT / "mab_stream.parquet"
    # MABWiser trains on a warm-up round first; Quiver plays every row, those among them.
    write_stream(path, x, rewards)
    print(f"# MABWiser vs Quiver: {rows} examples online, d = 64, K = 11")
    # Quiver's TS logs a propensity with every decision: the exact one by default, or a Monte
    # Carlo estimate (draws=n); MABWiser's logs none.
    specs = [("linucb", "linucb(alpha=0.5)"), ("ts", "beta-ts"), ("ts", "beta-ts(draws=256)"),
             ("ts", "beta-ts(draws=32)")]
    for policy, spec in specs:
        peer, ours = [], []
        for _ in range(args.reps):
            peer.append(mabwiser_stream(x, rewards, policy, seed=1))
            ours.append(quiver_side(args, "stream", str(path), spec))
        report(f"online decisions/s: {spec}", f"mabwiser {policy}", best(peer)["examples_per_s"],
               best(ours)["examples_per_s"], "dec/s")


# --- Off-policy evaluation: Open Bandit Pipeline ------------------------------------------

def stub_torch():
    """OBP imports torch at package import for its neural policy learners; its OPE
    estimators never call it. Registering an empty stand-in for `torch` and its submodules
    spares a multi-gigabyte install that the estimators do not use."""
    import importlib.abc
    import importlib.machinery
    import types

    class Meta(type):
        def __getattr__(cls, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return Meta(name, (), {})

    class Anything(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return Meta(name, (), {})

    class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path, target=None):
            if name == "torch" or name.startswith("torch."):
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
            return None

        def create_module(self, spec):
            module = Anything(spec.name)
            module.__path__ = []
            return module

        def exec_module(self, module):
            pass

    sys.meta_path.insert(0, Finder())


def section_obp(args):
    stub_torch()
    from obp.ope import (DirectMethod, DoublyRobust, InverseProbabilityWeighting,
                         SelfNormalizedDoublyRobust, SelfNormalizedInverseProbabilityWeighting,
                         SwitchDoublyRobust)

    n, k, tau = args.ope_rows, 5, 5.0
    rng = np.random.default_rng(11)
    scores = rng.normal(size=(n, k))
    logging = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    action = (logging.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    pscore = logging[np.arange(n), action]
    target = np.exp(-scores) / np.exp(-scores).sum(axis=1, keepdims=True)
    q_true = 1 / (1 + np.exp(-(scores + rng.normal(size=(n, k)))))
    reward = (rng.random(n) < q_true[np.arange(n), action]).astype(float)
    q_hat = np.clip(q_true + rng.normal(scale=0.1, size=(n, k)), 0, 1)
    action_dist = target[:, :, None]
    q_hat3 = q_hat[:, :, None]
    path = OUT / "ope_rows.parquet"
    # Quiver reads a log's rows: the target policy's probability of the logged action, the
    # reward model's estimate of it, and its estimate under the target policy. OBP takes the
    # n x K arrays and forms these itself, inside its timing; their forming is timed here.
    rows = np.arange(n)
    formers = dict(target=lambda: target[rows, action], q_logged=lambda: q_hat[rows, action],
                   dm=lambda: (target * q_hat).sum(axis=1))
    columns, forming_ms = {}, {}
    for column, form in formers.items():
        times = []
        for _ in range(BEST_OF):
            started = time.perf_counter()
            columns[column] = form()
            times.append((time.perf_counter() - started) * 1e3)
        forming_ms[column] = min(times)
    # The columns each estimator reads: its ratio with the forming counts theirs (the DR
    # family reads all three).
    reads = dict(ips=["target"], snips=["target"], dm=["dm"])
    pd.DataFrame(dict(reward=reward, pscore=pscore, **columns)).to_parquet(path, index=False)
    print(f"# OBP vs Quiver: {n} logged rows, K = {k}, the same reward model on both sides; Quiver's "
          f"per-row inputs formed from OBP's arrays in {sum(forming_ms.values()):.1f} ms (numpy), outside its timing; "
          f"bootstrap: Quiver {args.resamples} resamples on every core, OBP (one core) timed at "
          f"{args.obp_resamples} and {4 * args.obp_resamples} (best of two) and extrapolated to {args.resamples}")
    common = dict(reward=reward, action=action, action_dist=action_dist)
    estimators = {
        "ips": (InverseProbabilityWeighting(), dict(pscore=pscore)),
        "snips": (SelfNormalizedInverseProbabilityWeighting(), dict(pscore=pscore)),
        "dm": (DirectMethod(), dict(estimated_rewards_by_reg_model=q_hat3)),
        "dr": (DoublyRobust(), dict(pscore=pscore, estimated_rewards_by_reg_model=q_hat3)),
        "sndr": (SelfNormalizedDoublyRobust(), dict(pscore=pscore, estimated_rewards_by_reg_model=q_hat3)),
        "switch-dr": (SwitchDoublyRobust(lambda_=tau),
                      dict(pscore=pscore, estimated_rewards_by_reg_model=q_hat3)),
    }
    obp_times = {name: [] for name in estimators}
    obp_values = {}
    ours = []
    for _ in range(args.reps):
        # As many timed runs per side: Quiver's side keeps the best of BEST_OF in each call.
        for name, (estimator, extra) in estimators.items():
            for _ in range(BEST_OF):
                started = time.perf_counter()
                obp_values[name] = estimator.estimate_policy_value(**common, **extra)
                obp_times[name].append(time.perf_counter() - started)
        ours.append(quiver_side(args, "ope", str(path), str(args.resamples), str(tau)))
    for name in estimators:
        q = min(o["estimators"][name]["seconds"] for o in ours)
        value = ours[0]["estimators"][name]["value"]
        diff = abs(value - obp_values[name])
        formed = sum(forming_ms[c] for c in reads.get(name, formers))
        report(f"ope {name} on {n} rows", installed("obp"), min(obp_times[name]) * 1e3, q * 1e3, "ms",
               higher_is_better=False,
               note=f"|quiver - obp| = {diff:.1e}; x{min(obp_times[name]) * 1e3 / (q * 1e3 + formed):.2f} "
               f"with the forming of the columns it reads ({formed:.1f} ms) counted on Quiver's side")
        if diff > 1e-9:
            sys.exit(f"{name}: Quiver {value!r} and OBP {obp_values[name]!r} differ by more than 1e-9")
    for name in ["ips", "snips", "dr"]:
        estimator, extra = estimators[name]

        def interval(resamples):
            times = []
            for _ in range(2):
                started = time.perf_counter()
                estimator.estimate_interval(**common, **extra, n_bootstrap_samples=resamples, random_state=1)
                times.append(time.perf_counter() - started)
            return min(times)

        # A call's fixed work (checks, per-row rewards) and its cost per resample, from two
        # counts far enough apart: the fixed part is not multiplied with the resamples.
        few, more = args.obp_resamples, 4 * args.obp_resamples
        t_few, t_more = interval(few), interval(more)
        per_resample = max(t_more - t_few, 0.0) / (more - few)
        fixed = max(t_few - per_resample * few, 0.0)
        obp_seconds = fixed + per_resample * args.resamples
        q = min(o["bootstrap"]["estimators"][name]["seconds"] for o in ours)
        report(f"bootstrap {args.resamples} resamples: {name}", f"{installed('obp')} (extrapolated)", obp_seconds, q,
               "s", higher_is_better=False,
               note=f"obp: {fixed * 1e3:.0f} ms once + {per_resample * 1e3:.2f} ms a resample, on one core")


# --- Proxies: LiteLLM and quiver serve in front of one local upstream ----------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def wrk(url, body, args, headers=(), connections=None, think_ms=0):
    """wrk at fixed concurrency, POSTing `body` (or GETs without one); returns requests/s
    and latency percentiles in ms. With `think_ms`, each connection waits that long between
    a response and its next request, which holds the load below saturation."""
    script = OUT / "post.lua"
    lines = []
    if body is not None:
        lines += ['wrk.method = "POST"', 'wrk.headers["Content-Type"] = "application/json"',
                  f"wrk.body = [[{json.dumps(body)}]]"]
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers]
    if think_ms:
        lines.append(f"function delay() return {think_ms} end")
    script.write_text("\n".join(lines) + "\n")
    connections = connections or args.connections
    out = subprocess.run(
        # wrk needs a connection per thread.
        ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{args.seconds}s", "--latency", "-s",
         str(script), url],
        check=True, capture_output=True, text=True,
    ).stdout
    unit = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    pct = {int(p): float(v) * unit[u] for p, v, u in re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{url}: {non2xx.group(1)} failed responses\n{out}")
    return dict(rps=rps, p50=pct[50], p99=pct[99])


def fdatasync_latency(path, writes=3000, size=300):
    """The disk's part of an acknowledged request: what the decision log does per commit
    (a small write into preallocated space, then fdatasync), timed one by one."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC)
    try:
        os.posix_fallocate(fd, 0, writes * size)
        os.fsync(fd)
        record = b"x" * (size - 1) + b"\n"
        times = []
        for i in range(writes):
            os.pwrite(fd, record, i * size)
            started = time.perf_counter()
            os.fdatasync(fd)
            times.append((time.perf_counter() - started) * 1e3)
    finally:
        os.close(fd)
        os.unlink(path)
    times.sort()
    return {f"p{p:g}": times[min(len(times) - 1, int(p / 100 * len(times)))] for p in (50, 99, 99.9)}


def start(cmd, port, env=None, log=None):
    proc = subprocess.Popen(cmd, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        wait_ready(port)
    except RuntimeError:
        stop(proc)
        raise
    return proc


def stop(proc):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def route_load(port, log, args, probe_disk=False):
    """`/v1/route` at saturation (wrk's connections back to back) and at a moderate load
    (2 connections, 1 ms between a response and the next request), `--reps` times each.
    Each is followed by `/healthz` of the same server under the same load: what the
    machine and the load generator alone give, the floor of the figures."""
    body = {"route": "chat", "prompt": "What is 17 times 23?"}
    for _ in range(args.reps):
        for label, connections, think_ms in [("saturated", args.connections, 0), ("moderate", 2, 1)]:
            load = f"{label} (c={connections}{', 1 ms think' if think_ms else ''})"
            for path, name, payload in [("/v1/route", f"quiver serve /v1/route, {log}, {load}", body),
                                        ("/healthz", f"  same server, GET /healthz, {load}", None)]:
                run = wrk(f"http://127.0.0.1:{port}{path}", payload, args, connections=connections,
                          think_ms=think_ms)
                print(f"{name}: {run['rps']:.0f} req/s, p50 {run['p50']:.3f} ms, p99 {run['p99']:.3f} ms",
                      flush=True)
                RESULTS.append(dict(name=name, **run))
        if probe_disk:
            disk = fdatasync_latency(OUT / "fdatasync.probe")
            print(f"  this disk, same run: 300-byte write + fdatasync of a preallocated file, "
                  f"p50 {disk['p50']:.3f} ms, p99 {disk['p99']:.3f} ms, p99.9 {disk['p99.9']:.3f} ms", flush=True)
            RESULTS.append(dict(name="fdatasync, 300-byte appends", **disk))


def proxy_configs(up_port, q_port, log_dir, scenario):
    """Quiver's and LiteLLM's configurations for one proxy scenario: `one model` (LinUCB
    over two models, one upstream each), `cache hit` (the same with each proxy's response
    cache on, so that every repeat of wrk's one request is a hit) or `three deployments`
    (the first model served by three deployments of the local upstream, balanced by each
    proxy's default: Quiver least-busy, LiteLLM simple shuffle)."""
    upstream = f"http://127.0.0.1:{up_port}/v1"
    deployments = scenario == "three deployments"
    models = ""
    for i in range(2):
        models += (f'\n[[routes.models]]\nid = "local-{i}"\n'
                   f"input_usd_per_million = {1 + i}\noutput_usd_per_million = {2 + i}\n")
        if deployments and i == 0:
            models += "".join(f'[[routes.models.deployments]]\nname = "d{d}"\nbase_url = "{upstream}"\n'
                              for d in range(3))
        else:
            models += f'base_url = "{upstream}"\n'
    cache = "\n[cache]\nenabled = true\n" if scenario == "cache hit" else ""
    quiver = (f'listen = "127.0.0.1:{q_port}"\nlog_dir = "{log_dir}"\n{cache}\n'
              f'[[routes]]\nname = "chat"\npolicy = "linucb(alpha=0.5,floor=0.02)"\nw_cost = 20.0\n{models}')
    entries = 3 if deployments else 1
    litellm = "model_list:\n" + "".join(
        "  - model_name: chat\n    litellm_params:\n      model: openai/local-0\n"
        f"      api_base: {upstream}\n      api_key: sk-local\n" for _ in range(entries))
    if scenario == "cache hit":
        litellm += "litellm_settings:\n  cache: true\n  cache_params:\n    type: local\n"
    return quiver, litellm


def section_proxy(args):
    up_port, q_port, l_port = free_port(), free_port(), free_port()
    upstream = start([args.quiver_side, "upstream", str(up_port)], up_port)
    log_dir = OUT / "serve-log"
    config = OUT / "quiver.toml"
    litellm_config = OUT / "litellm.yaml"
    body = {"model": "chat", "messages": [{"role": "user", "content": "What is 17 times 23?"}]}
    url = "/v1/chat/completions"
    # LiteLLM lives in its own environment: its pinned version is the requirement's.
    pinned = (Path(__file__).parent / "litellm-requirements.txt").read_text().split("==")[1].strip()
    litellm_label = f"litellm {pinned} proxy"
    try:
        for scenario in ["one model", "cache hit", "three deployments"]:
            print(f"# proxies in front of one local upstream, {scenario}: wrk, {args.seconds}s per "
                  f"run, runs alternated; latency at one connection (what a request adds, not "
                  f"queueing), throughput at {args.connections}")
            subprocess.run(["rm", "-rf", str(log_dir)], check=True)
            quiver_text, litellm_text = proxy_configs(up_port, q_port, log_dir, scenario)
            config.write_text(quiver_text)
            litellm_config.write_text(litellm_text)
            quiver = start([args.quiver, "serve", "--config", str(config)], q_port)
            litellm_log = open(OUT / "litellm.log", "a")
            # A worker per core, as Quiver's server has a thread per core.
            litellm = start([args.litellm, "--config", str(litellm_config), "--port", str(l_port),
                             "--num_workers", str(os.cpu_count() or 1)], l_port,
                            env={"LITELLM_LOCAL_MODEL_COST_MAP": "True"}, log=litellm_log)
            targets = {
                "direct": (f"http://127.0.0.1:{up_port}{url}", ()),
                "quiver": (f"http://127.0.0.1:{q_port}{url}", ()),
                "litellm": (f"http://127.0.0.1:{l_port}{url}", [("Authorization", "Bearer sk-local")]),
            }
            # At one connection a request waits for no other: its latency is what each hop
            # adds. At saturation it is mostly queueing, connections / throughput.
            runs = {side: [] for side in targets}
            loaded = {side: [] for side in targets}
            for _ in range(args.reps):
                for side, (target, headers) in targets.items():
                    runs[side].append(wrk(target, body, args, headers=headers, connections=1))
                    loaded[side].append(wrk(target, body, args, headers=headers))
            direct = {p: min(r[p] for r in runs["direct"]) for p in ("p50", "p99")}
            for p in ("p50", "p99"):
                added = {side: min(r[p] for r in runs[side]) - direct[p] for side in ("quiver", "litellm")}
                name = f"proxy added latency {p}, {scenario} (c=1)"
                totals = (f"direct {direct[p]:.3f} ms; each run's total, ms: "
                          + "; ".join(f"{side} " + "/".join(f"{r[p]:.3g}" for r in runs[side]) for side in runs))
                if added["quiver"] <= 0:
                    # Within the direct path's noise: no ratio to give.
                    print(f"{name:<44} {litellm_label:<26} {added['litellm']:>12.4g} ms         "
                          f"quiver adds nothing measurable ({added['quiver']:.3g} ms) {totals}", flush=True)
                    RESULTS.append(dict(name=name, peer=litellm_label, peer_value=added["litellm"],
                                        quiver_value=added["quiver"], unit="ms", quiver_advantage=None, note=totals))
                    continue
                report(name, litellm_label, added["litellm"], added["quiver"], "ms", higher_is_better=False,
                       note=totals)
            report(f"proxy throughput, {scenario} (c={args.connections})", litellm_label,
                   max(r["rps"] for r in loaded["litellm"]), max(r["rps"] for r in loaded["quiver"]), "req/s")
            stop(litellm)
            if scenario == "one model":
                route_load(q_port, "fsynced log", args, probe_disk=True)
            stop(quiver)
        # The same server with its log in memory, where fsync returns at once: what the
        # software adds, apart from the disk.
        memory_log = Path("/dev/shm") / f"quiver-compare-{os.getpid()}"
        if memory_log.parent.is_dir():
            subprocess.run(["rm", "-rf", str(memory_log)], check=True)
            config.write_text(proxy_configs(up_port, q_port, memory_log, "one model")[0])
            quiver = start([args.quiver, "serve", "--config", str(config)], q_port)
            try:
                route_load(q_port, "log in memory", args)
            finally:
                stop(quiver)
                subprocess.run(["rm", "-rf", str(memory_log)], check=True)
    finally:
        stop(upstream)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quiver", required=True, help="the release quiver binary")
    parser.add_argument("--quiver-side", required=True, help="the compare harness binary")
    parser.add_argument("--litellm", help="the litellm executable (proxy section)")
    parser.add_argument("--sections", default="vw,mabwiser,obp,proxy")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--vw-rows", type=int, default=20_000)
    parser.add_argument("--mab-rows", type=int, default=2_000)
    parser.add_argument("--ope-rows", type=int, default=1_000_000)
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--obp-resamples", type=int, default=50)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    sections = dict(vw=section_vw, mabwiser=section_mabwiser, obp=section_obp, proxy=section_proxy)
    for name in args.sections.split(","):
        sections[name](args)
    (OUT / "results.json").write_text(json.dumps(RESULTS, indent=2))


if __name__ == "__main__":
    main()
