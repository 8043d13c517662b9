"""The run's summary: one JSON document and the same figures as a short table."""
from __future__ import annotations



def _delta(start, end, field: str):
    """What the server counted during the run; None where it keeps no such count or it could not be read."""
    if start is None or end is None or getattr(end, field) is None or getattr(start, field) is None:
        return None
    return getattr(end, field) - getattr(start, field)


def _replica_deltas(start, end) -> dict | None:
    """Each teacher replica's count of this run's images and requests; None for one that could not be read."""
    if start is None or end is None or not (start.replicas or end.replicas):
        return None
    out = {}
    for name in {**(start.replicas or {}), **(end.replicas or {})}:
        a, b = (start.replicas or {}).get(name), (end.replicas or {}).get(name)
        out[name] = None if a is None or b is None else {k: b[k] - a[k] for k in ("images", "requests")}
    return out


def _stats_source(start, end) -> str | None:
    """Where the server's figures came from, or why they are null ("unavailable: ...", start's reason first)."""
    for stats in (start, end):
        if stats is not None and not stats.available:
            return stats.source
    return end.source if end is not None else None


def build_summary(*, config, spec, work, top1, best_top1, epochs, teacher, server_start, server_end,
                  flops, cost, kd_cost, wall_seconds, time_split=None, k=0, client=None, processes=1,
                  store=None, policy=None, prefetch=None) -> dict:
    """``client``: the teacher client's counters as a dict (summed over the ranks), default the teacher's own;
    ``store``: the answer store's counters (this process's); ``policy``: the policy's own report (this
    process's: ``--verify-store``'s check)."""
    c = client if client is not None else (teacher.counters.as_dict() if teacher else None)
    info = teacher.describe() if teacher else None
    s = {
        "method": config.method.label,
        "arch": config.schedule.arch,
        "dataset": spec.name,
        "teacher": info.model_name if info else None,
        "teacher_arch": info.arch if info else None,
        "teacher_id": info.weights_sha256 if info else None,
        "teacher_url": config.teacher.url if teacher else None,
        "wire_dtype": config.teacher.wire_dtype if teacher else None,
        "send": config.teacher.send if teacher else None,  # the teacher's images as pixels, or as view recipes
        "batch_size": config.batch_size,     # the global batch (each of the processes draws its share)
        "processes": processes,           # torchrun's --nproc_per_node x nodes: ranks training this student
        "query": config.method.query,
        "loss": config.method.loss,
        "k": k,
        "seed": config.run.seed,
        "top1": top1,
        "best_top1": best_top1,
        "epochs": epochs,
        "steps": work.steps,
        "student_images": work.student_images,
        "student_forward_images": work.student_forward,
        "student_backward_images": work.student_backward,
        "teacher_images": work.teacher_images,
        "teacher_query_ratio": work.teacher_images / max(work.student_images, 1),
        "teacher_requests": c["requests"] if c else 0,
        "bytes_sent": c["bytes_sent"] if c else 0,
        "bytes_received": c["bytes_received"] if c else 0,
        "teacher_wait_seconds": c["wait_seconds"] if c else 0.0,
        # --prefetch as given ("auto" or D) and the most steps it kept chosen ahead of the one in training
        **({"prefetch": prefetch.setting, "prefetch_depth_max": prefetch.deepest} if prefetch else {}),
        "server_images_delta": _delta(server_start, server_end, "images"),
        # --verify-store: images re-asked to check a stored answer (of teacher_requests' images, not of
        # teacher_images, which are the images trained on), by this client and by the server's count
        "verify_images": c.get("verify_images", 0) if c else 0,
        "server_verify_images_delta": _delta(server_start, server_end, "verify_images"),
        "server_requests_delta": _delta(server_start, server_end, "requests"),
        "server_bytes_in_delta": _delta(server_start, server_end, "bytes_in"),
        "server_bytes_out_delta": _delta(server_start, server_end, "bytes_out"),
        "server_stats_source": _stats_source(server_start, server_end),
        "server_replicas": _replica_deltas(server_start, server_end),
        "teacher_flops_per_image": flops["teacher_forward"],
        "student_flops_per_image": flops["student_forward"],
        "student_backward_flops_per_image": flops["student_backward"],
        "loss_flops_per_image": flops.get("loss", 0.0),
        "compute_flops": cost,
        "compute_vs_kd": (cost / kd_cost) if teacher and kd_cost else None,
        "kd_equivalent_flops": kd_cost,
        "wall_seconds": wall_seconds,
        # Wall seconds by phase: data loading, uncertainty pass, mixing, waiting for the
        # teacher, student forward/backward/step, evaluation, checkpoints.
        "time_split": {k: round(v, 3) for k, v in (time_split or {}).items()},
        # --replay-store: views read back (hits), slots found empty or damaged (misses), entries written.
        "answer_store": None if store is None else {"url": store.url, **store.counters.as_dict()},
        # --verify-store: stored answers against the teacher's fresh ones (mean |difference|, top-k share differing)
        "verify_store": policy,
    }
    return s


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"
    return "-" if value is None else str(value)


ROWS = ("method", "arch", "teacher", "dataset", "top1", "epochs", "steps", "student_images",
        "teacher_images", "teacher_query_ratio", "teacher_requests", "bytes_sent", "bytes_received",
        "server_images_delta", "teacher_flops_per_image", "student_flops_per_image", "compute_vs_kd",
        "teacher_wait_seconds", "wall_seconds")


def format_summary(*summaries: dict) -> str:
    """Summaries as a table, one column per run (so KD and UNIX sit side by side)."""
    width = max(map(len, ROWS))
    lines = []
    for key in ROWS:
        cells = [_fmt(s.get(key)) for s in summaries]
        lines.append(f"{key:<{width}}  " + "  ".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)
