"""The one training loop, for every model and recipe.

    fashionlab train weil-fc --epochs 3

The data sits on the device as uint8 tensors; each batch is a slice of a seeded permutation,
augmented and normalised as whole-batch tensor ops. The hot loop does no host syncs except a
finiteness check every CHECK_EVERY steps. Small hooks run at each epoch end: history file,
checkpoint (atomic, everything resuming needs), early stopping, divergence guard, and any
caller's hooks (a sweep's pruner). Resuming restores every RNG, so a resumed run ends with
the same weights, bit for bit, as one never interrupted.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from fashionlab import (
    augment,
    callable_module,
    checkpoint,
    convs,
    data,
    distributed,
    hardware,
    models,
    optim,
    resources,
    runs,
    signals,
)
from fashionlab import config as cfg
from fashionlab.errors import DivergedError, RunError, SpecError, UserError
from fashionlab.inference import as_input, logits, loss_and_accuracy

CHECK_EVERY = 50  # steps between NaN checks; each check is one host sync
Hook = Callable[[Path, int, dict], None]


class StopRun(Exception):
    """Raised by an epoch hook to end a run early, e.g. a sweep pruning a poor trial."""

    def __init__(self, state: str, reason: str):
        super().__init__(reason)
        self.run_state, self.reason = state, reason


@dataclass
class Tensors:
    """The splits on the device: images uint8 (N, 1, 28, 28), labels int64 (N,)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass
class Loop:
    """Everything the loop mutates; exactly what a checkpoint holds."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best: float = math.nan
    best_epoch: int = 0
    wait: int = 0
    best_weights: dict | None = None
    seconds: float = 0.0


def to_tensors(ds: data.DataSet, val: str, seed: int, device: torch.device) -> Tensors:
    train_idx, val_idx = data.split(len(ds.train_y), val, seed)

    def put(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1).to(device),
                torch.from_numpy(y.astype(np.int64)).to(device))

    return Tensors(*put(ds.train_x[train_idx], ds.train_y[train_idx]),
                   *put(ds.train_x[val_idx], ds.train_y[val_idx]),
                   *put(ds.test_x, ds.test_y))


def _improved(value: float, best: float, monitor: str) -> bool:
    if math.isnan(best):
        return True
    return value > best if monitor == "val_accuracy" else value < best


def _snapshot(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class EMA:
    """Exponential moving average of the weights, updated with one fused op per step."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.module = copy.deepcopy(module)
        self.decay = decay
        self.params = list(self.module.parameters())
        self.live = list(module.parameters())
        self.source = module

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.params, self.live, 1 - self.decay)

    def sync_buffers(self) -> None:
        for mine, theirs in zip(self.module.buffers(), self.source.buffers(), strict=True):
            mine.copy_(theirs)


def train(source: str | dict, *, flags: dict | None = None, overrides: list[str] = (),
          data_dir: str | None = None, out: str | None = None, quiet: bool = False,
          hooks: list[Hook] = (), resume: str | Path | None = None,
          force: bool = False) -> Path | None:
    """Train a recipe, spec file or config dict; return the finished run folder (None on
    the ranks other than 0 of a distributed run: they write nothing)."""
    hardware.configure_threads()
    if resume is not None:
        run_dir = Path(resume)
        run = runs.load_run(run_dir, require_finished=False)
        if run.finished:
            return run_dir
        config = _resume_config(run, flags, overrides, force, quiet)
    else:
        config = cfg.resolve(source, flags, overrides)
    train_cfg = config["train"]
    check_config(config)
    warn = not quiet and resume is None and distributed.is_main()
    if train_cfg["engine"] == "numpy":
        from fashionlab import numpy_engine

        config = cfg.for_precision(config, "fp32")
        _warn_tta(config, warn)
        return numpy_engine.train(config, data_dir=data_dir, out=out, quiet=quiet, hooks=hooks,
                                  resume=resume)
    seed = train_cfg["seed"]
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    dev = hardware.device()
    table = cfg.bf16_keys(config)
    config, net, precision = prepare(config, dev)
    _warn_tta(config, warn)
    bf16_keys = {k: _shown(v, net) for k, v in table.items()} if precision == "bf16" else {}
    if not quiet and distributed.is_main():
        note = hardware.fewer_threads_note(torch.get_num_threads(), hardware.usable_cores())
        if note and dev.type == "cpu":
            print(note, file=sys.stderr)
        if bf16_keys:
            print("training in bf16, so the recipe's [bf16] keys apply: " + ", ".join(
                f"model.layers ({value})" if key == "model.layers" else f"{key} = {value!r}"
                for key, value in bf16_keys.items()), file=sys.stderr)
    train_cfg = config["train"]
    channels_last = hardware.use_channels_last(train_cfg["channels_last"], net.is_conv)
    dft_convs = convs.convert(net.module, train_cfg["conv"], dev, precision)
    matmul_convs = convs.whole_input(net, train_cfg["conv"], dev)
    ds = (data.for_config(data_dir, config["data"]) if resume is None  # else its own data,
          else data.of_run(run.info, config, data_dir))               # unchanged
    tensors = to_tensors(ds, config["data"]["val"], seed, dev)
    distributed.check_shards(len(tensors.y_train), train_cfg["batch_size"])  # before a folder
    if len(tensors.y_val) == 0 and train_cfg["patience"]:
        raise UserError("early stopping (train.patience) needs a validation split")
    resources.check(net, config, run_dir if resume else runs.parent(out), dev,
                    len(tensors.y_test))
    if not distributed.is_main():  # the other ranks train in step with rank 0
        with signals.graceful() as interrupt:
            _fit(net, config, tensors, run_dir if resume else None, dev, precision,
                 channels_last, True, (), resume is not None, interrupt)
        return None

    if resume is None:
        run_dir = runs.create(config["model"]["name"] or "run", out)
        runs.start(run_dir, cfg.dumps(config), {
            "name": config["model"]["name"], "engine": "torch", "seed": seed,
            "config_digest": cfg.digest(config), "device": str(dev),
            "precision": precision, **({"bf16_keys": bf16_keys} if bf16_keys else {}),
            "dft_convs": dft_convs, "matmul_convs": matmul_convs,
            "cpu": hardware.cpu_description(),
            **({"gpu": torch.cuda.get_device_name(dev)} if dev.type == "cuda" else {}),
            "torch": torch.__version__, "params": net.params,
            "world_size": distributed.rank_world()[1],
            "data": data.provenance(ds)})
    else:
        runs.resumed(run_dir, (run_dir / checkpoint.FILE).exists())
    world = distributed.rank_world()[1]
    if resume is not None and run.info.get("world_size", 1) != world:
        print(f"warning: {run_dir} trained as {run.info.get('world_size', 1)} process(es) and "
              f"resumes as {world}: its steps match an unbroken run's to float rounding only",
              file=sys.stderr)
        runs.update_info(run_dir, resumed_world_size=world)
    try:
        signals.guarded(run_dir, lambda interrupt: _fit(
            net, config, tensors, run_dir, dev, precision, channels_last, quiet, hooks,
            resume is not None, interrupt))
    except KeyboardInterrupt as e:  # resumed as it ran: by as many processes
        if world > 1:
            e.resume_command = (f"torchrun --nproc-per-node {world} -m fashionlab train "
                                f"--resume {run_dir} --distributed")
        raise
    return run_dir


def prepare(config: dict, dev: torch.device) -> tuple[dict, models.Net, str]:
    """The precision a run trains in (`auto` decides on the recipe's own model), the config
    it trains with ([bf16] applied or dropped) and its net. A [bf16] model is built from the
    seed again, so it starts where a run of those layers as a recipe would."""
    net = models.build(config["model"]["layers"])
    precision = hardware.resolve_precision(config["train"]["precision"], dev, net.conv_flops)
    if precision == "bf16" and cfg.bf16_layers(config) is not None:
        torch.manual_seed(config["train"]["seed"])
        net = bf16_net(config)
    return cfg.for_precision(config, precision), net, precision


def check_config(config: dict) -> None:
    """What a config about to train must meet beyond its single keys (train and show)."""
    cfg.check_train(config["train"])
    check_nets(config)
    data.class_names(config["data"])


def check_nets(config: dict) -> None:
    """models.check_trainable on the recipe's net and its [bf16] table's (errors say whose)."""
    models.check_trainable(config["model"]["layers"])
    if cfg.bf16_layers(config) is not None:
        try:
            models.check_trainable(cfg.bf16_layers(config))
        except SpecError as e:
            raise SpecError(f"[bf16] model: {e}") from None


def _warn_tta(config: dict, warn: bool) -> None:
    """On the config that trains ([bf16] keys applied or not)."""
    if warn and config["train"]["tta_flip"] and not config["augment"]["flip"]:
        print("warning: train.tta_flip averages in mirrored test images, but the net never "
              "trains on mirrored ones (augment.flip = 0): it may score lower", file=sys.stderr)


def bf16_net(config: dict) -> models.Net | None:
    """The [bf16] table's net, if it has one, built (shapes checked); errors say whose."""
    if cfg.bf16_layers(config) is None:
        return None
    try:
        return models.build(cfg.bf16_layers(config))
    except SpecError as e:
        raise SpecError(f"[bf16] model: {e}") from None


def _shown(value: object, net: models.Net) -> object:
    """A [bf16] value as a run prints and records it: layers as a count, not a page of TOML
    (the run folder's config.toml holds them)."""
    if isinstance(value, list):
        return f"{len(value)} layers, {net.params:,} parameters"
    return value


def _alive(info: dict) -> bool:
    """Is the process recorded in run.json still running on this machine (and not us)?"""
    pid = info.get("pid")
    if not isinstance(pid, int) or pid == os.getpid() or info.get("host") != platform.node():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _resume_config(run: runs.Run, flags: dict | None, overrides: list[str], force: bool,
                   quiet: bool) -> dict:
    """The saved config (plus any new options); refuse a change of config or code or a run
    still training elsewhere, unless forced, since resuming would mix two experiments."""
    config = cfg.resolve(run.config, flags, overrides)
    was = run.config.get("train", {}).get("engine", "torch")
    if config["train"]["engine"] != was:  # even forced: one engine cannot read the other's
        raise RunError(f"{run.path} trains with the {was} engine, whose checkpoint the "
                       f"{config['train']['engine']} engine cannot go on from: start a new run")
    if run.info.get("state") == "running" and _alive(run.info) and not force:
        raise RunError(f"{run.path} is still being trained by process {run.info['pid']}; "
                       "stop it first (--force to resume anyway)")
    changed = [what for what, old, new in (
        ("config", run.info.get("config_digest"), cfg.digest(config)),
        ("code", run.info.get("code_version"), runs.code_version())) if old != new]
    if changed and not force:
        raise RunError(f"{run.path}: the {' and '.join(changed)} changed since this run "
                       "started; resuming could mix two experiments (--force to resume)")
    if changed:
        if not quiet:
            print(f"warning: resuming {run.path} with a changed {' and '.join(changed)}",
                  file=sys.stderr)
        runs.write_text(run.path / "config.toml", cfg.dumps(config))
        runs.update_info(run.path, config_digest=cfg.digest(config),
                         code_version=runs.code_version())
    return config


def _fit(net: models.Net, config: dict, t: Tensors, run_dir: Path, dev: torch.device,
         precision: str, channels_last: bool, quiet: bool, hooks: list[Hook],
         resuming: bool, interrupt: signals.Flag) -> None:
    train_cfg, aug = config["train"], config["augment"]
    module = net.module.to(dev)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    rank, world = distributed.rank_world()  # each rank trains on its slice of every batch
    model = distributed.wrap(module, dev)  # DDP averages the gradients over the ranks
    batch, n = train_cfg["batch_size"], len(t.y_train)
    steps = math.ceil(n / batch)  # the last, partial batch is kept, as Keras does
    if n % batch == 1 and steps > 1 and any(isinstance(m, torch.nn.BatchNorm1d)
                                            for m in module.modules()):
        steps -= 1  # a lone last image joins the batch before: batch norm cannot take one
    opt = optim.make_optimizer(module.parameters(), train_cfg)
    schedule = optim.make_schedule(opt, train_cfg, steps)
    opt_step = optim.stepper(opt)
    ema = EMA(module, train_cfg["ema"]) if train_cfg["ema"] else None
    order_gen = torch.Generator().manual_seed(train_cfg["seed"])
    aug_gen = torch.Generator(dev).manual_seed(train_cfg["seed"] + 1)
    generators = {"order": order_gen, "augment": aug_gen}
    loop = Loop()
    saved = checkpoint.load(run_dir) if resuming else None
    if saved is not None:
        try:
            module.load_state_dict(saved["model"])
            _restore_optimizer(opt, schedule, saved)
            if ema:
                ema.module.load_state_dict(saved["ema"])
        except (KeyError, ValueError, RuntimeError, AttributeError) as e:
            raise RunError(f"{run_dir}: the checkpoint does not fit the changed config "
                           f"({str(e).splitlines()[0]})") from None
        moved = checkpoint.set_rng_state(saved["rng"], generators)
        if moved and rank == 0:
            was = saved["rng"]["devices"][moved[0]]
            print(f"warning: {run_dir} trained on {was} and resumes on {dev.type}: its "
                  f"{' and '.join(moved)} random numbers start again from the seed, so it "
                  "will not match an unbroken run", file=sys.stderr)
            runs.update_info(run_dir, resumed_on=f"{dev} ({precision})")
        loop = Loop(**saved["loop"])
    penalties, constraints = bool(net.penalties), bool(net.constraints)
    smoothing = train_cfg["label_smoothing"]
    show = not quiet and sys.stderr.isatty()

    augmenting = augment.enabled(aug)
    for epoch in range(loop.epoch + 1, train_cfg["epochs"] + 1):
        start = time.perf_counter()
        module.train()
        perm = torch.randperm(n, generator=order_gen).to(dev)
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.long)
        bar = tqdm(total=steps, desc=f"epoch {epoch}/{train_cfg['epochs']}", disable=not show,
                   leave=False, unit="step")
        for step in range(steps):
            stop = interrupt.signum if world == 1 else (  # ranks stop at one agreed step
                distributed.stopping(interrupt.signum, dev) if step % CHECK_EVERY == 0 else None)
            if stop is not None:  # drop the partial epoch; the last one is saved
                interrupt.signum = stop
                raise interrupt.error(f"during epoch {epoch} (last saved: epoch {loop.epoch})")
            whole = perm[step * batch:(step + 1) * batch if step + 1 < steps else n]
            idx = whole[rank::world]
            x = t.x_train[idx].float()
            y = t.y_train[idx]
            if augmenting:
                x = augment.apply(x, aug, aug_gen)
            x = as_input(x, config, channels_last)
            with hardware.autocast(dev, precision):
                z = model(x)
            loss = F.cross_entropy(z.float(), y, label_smoothing=smoothing)
            opt.zero_grad(set_to_none=True)
            if world > 1:  # DDP averages the ranks' gradients: weigh each by its batch share
                (loss * (len(idx) * world / len(whole))).backward()
            else:
                loss.backward()
            if penalties:
                loss = loss.detach() + models.add_penalty_grads(net)
            opt_step()
            schedule.step()
            if constraints:
                models.apply_constraints(net)
            if ema:
                ema.update()
            loss_sum.add_(loss.detach(), alpha=len(y))
            correct += (z.detach().argmax(1) == y).sum()
            if step % CHECK_EVERY == CHECK_EVERY - 1 and not distributed.finite(loss_sum):
                _diverged(f"loss became {loss_sum.item()}", epoch, step, opt, run_dir)
            bar.update()
        bar.close()
        distributed.sum_(loss_sum, correct)  # the global loss and accuracy
        distributed.average_buffers(module)
        if not torch.isfinite(loss_sum):
            _diverged(f"loss became {loss_sum.item()}", epoch, steps - 1, opt, run_dir)
        evaluated = module
        if ema:
            ema.sync_buffers()
            evaluated = ema.module
        val_loss, val_acc = loss_and_accuracy(
            logits(evaluated, t.x_val, config, dev, precision, channels_last), t.y_val)
        if len(t.y_val) and not math.isfinite(val_loss):  # e.g. batch norm's running statistics
            _diverged(f"validation loss became {val_loss}", epoch, steps - 1, opt, run_dir)
        seconds = time.perf_counter() - start
        loop.seconds += seconds
        row = {"epoch": epoch, "loss": loss_sum.item() / n, "accuracy": correct.item() / n,
               "val_loss": val_loss, "val_accuracy": val_acc,
               "lr": opt.param_groups[0]["lr"], "seconds": seconds}
        loop.history.append(row)
        loop.epoch = epoch
        stop = _early_stopping(loop, row, train_cfg, evaluated)
        if rank == 0:  # the other ranks write nothing
            checkpoint.save(run_dir, {
                "model": module.state_dict(), "optimizer": opt.state_dict(),
                "schedule": schedule.state_dict(),
                "ema": ema.module.state_dict() if ema else None,
                "rng": checkpoint.rng_state(generators), "loop": vars(loop)})
            runs.write_history(run_dir, loop.history)  # after: never shows an unsaved epoch
            if not quiet:
                tqdm.write(runs.epoch_line(row, train_cfg["epochs"]), file=sys.stderr)
            for hook in hooks:
                hook(run_dir, epoch, row)
        if stop:
            break
    final = ema.module if ema else module
    if loop.best_weights is not None and train_cfg["restore_best"]:
        final.load_state_dict(loop.best_weights)
    if rank == 0:
        _finish(net, final, config, t, run_dir, dev, precision, channels_last, loop)


def _restore_optimizer(opt: torch.optim.Optimizer, schedule, saved: dict) -> None:
    """Load moments and step counts but keep the config's hyperparameters: the same values on
    a plain resume, and on a forced one (say, a new lr or more epochs) the ones asked for."""
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    opt.load_state_dict(saved["optimizer"])
    _match_layouts(opt)
    schedule.load_state_dict(saved["schedule"])
    for group, fresh, factor in zip(opt.param_groups, hyper, schedule.lr_lambdas, strict=True):
        group.update(fresh, lr=fresh["initial_lr"] * factor(schedule.last_epoch))
    schedule.base_lrs = [g["initial_lr"] for g in opt.param_groups]
    schedule._last_lr = [g["lr"] for g in opt.param_groups]


def _match_layouts(opt: torch.optim.Optimizer) -> None:
    """Moments come back from a checkpoint contiguous, while a channels-last weight's were
    made in its own layout; the fused Adam kernel walks the tensors' memory in step, so they
    must agree again, or a resumed run updates each weight with another one's moments."""
    for param, state in opt.state.items():
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape:
                state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _early_stopping(loop: Loop, row: dict, train_cfg: dict, module: torch.nn.Module) -> bool:
    """Track the best epoch; return True when patience has run out."""
    monitor = train_cfg["monitor"]
    value = row[monitor]
    if math.isnan(value):
        return False
    if _improved(value, loop.best, monitor):
        loop.best, loop.best_epoch, loop.wait = value, row["epoch"], 0
        if train_cfg["patience"]:
            loop.best_weights = _snapshot(module)
        return False
    loop.wait += 1
    return bool(train_cfg["patience"]) and loop.wait >= train_cfg["patience"]


def _diverged(what: str, epoch: int, step: int, opt, run_dir: Path) -> None:
    lr = opt.param_groups[0]["lr"]
    kept = f"epoch {epoch - 1} kept in {run_dir}" if epoch > 1 else "no epoch finished"
    raise DivergedError(f"training diverged: {what} at epoch {epoch}, step {step + 1} "
                        f"(lr {lr:g}); lower the learning rate ({kept})")


def _finish(net: models.Net, module: torch.nn.Module, config: dict, t: Tensors, run_dir: Path,
            dev: torch.device, precision: str, channels_last: bool, loop: Loop) -> None:
    """Test once, at the end, then write weights, predictions and metrics; mark finished."""
    z = logits(module, t.x_test, config, dev, precision, channels_last)
    test_loss, test_acc = loss_and_accuracy(z, t.y_test)
    weights = {k: v.detach().cpu().contiguous().numpy()
               for k, v in module.state_dict().items()}
    runs.write_tensors(run_dir / "model.safetensors", weights,
                       {"format": "fashionlab-weights", "config_digest": cfg.digest(config)})
    runs.save_predictions(run_dir, models.probabilities(z).cpu().numpy(),
                          t.y_test.cpu().numpy())
    last = loop.history[-1] if loop.history else {}
    if loop.best_weights is not None and config["train"]["restore_best"]:
        last = loop.history[loop.best_epoch - 1]  # the epoch whose weights were kept
    runs.write_json(run_dir / "metrics.json", {
        "test_accuracy": test_acc, "test_loss": test_loss, "epochs_run": loop.epoch,
        "train_seconds": loop.seconds,
        "seconds_per_epoch": loop.seconds / max(1, loop.epoch),
        "val_accuracy": last.get("val_accuracy", math.nan),
        "best_epoch": loop.best_epoch, "params": net.params, "flops_per_image": net.flops})
    runs.set_state(run_dir, "finished")


callable_module(__name__)  # fashionlab.train(...) keeps working once this module is imported
