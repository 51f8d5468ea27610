"""The one surface the UI and the CLI call. Plain values in and out; heavy libraries load only when needed.

Training:  start(spec) -> RunHandle; poll(handle) -> RunStatus; wait(handle, seconds); cancel(handle); resume(run);
           list_runs().
Data:      inspect_data(path); identity_dataset(...); save_jsonl(rows, path); parse_map(['q=instruction']).
Chat:      Chat(source).reply(messages) / .stream(messages, stats=ReplyStats()) / .compare(messages);
           sampling_defaults(source); system_prompt(source).
Evaluate:  evaluate(sources, data) -> results (saved in the run's eval/); eval_results(run); compare_runs(runs);
           best_checkpoint(run).
Export:    export(source, fmt, out) -> ExportResult; start_export(source, fmt, out, push_to_hub, token) -> ExportJob.
Models:    start_download(model) / poll_download(model) -> DownloadStatus; model_arch(model); adapter_layers(model).
Machine:   doctor(); gpu_stats(); estimate(model); catalog().
Sharing:   restrict_files(roots); withhold_hub_token(); hub_token_lend_asked() (engine.core.hub_token).

Split by stage, one module each: runs (training runs), data, chat, models (downloads, architecture), machine (doctor,
GPU, estimate), exports, with access (workspace, shared-app file rules) and processes (background runs and exports)
beneath them. Callers import this package only (`from engine import api`); the names below are its surface.
May import every engine stage; torch and the other heavy libraries load inside the functions that need them.
"""

from engine.api.access import (
    WORKSPACE_ENV,
    check_access,
    restrict_files,
    runs_dir,
    safe_name,
    tidy_workspace,
    uploads_dir,
    workspace,
)
from engine.api.chat import Chat, sampling_defaults, system_prompt
from engine.api.data import check_data, identity_dataset, inspect_data, save_jsonl
from engine.api.evals import compare_runs, eval_results, evaluate
from engine.api.exports import (
    EXPORT_FORMATS,
    ExportJob,
    ExportStatus,
    cancel_export,
    export,
    exported_gguf_files,
    formats_refused,
    gguf_support,
    poll_export,
    running_exports,
    start_export,
)
from engine.api.machine import doctor, estimate, gpu_stats, gpus_for, gpus_found, run_gpus
from engine.api.models import DownloadStatus, adapter_layers, model_arch, poll_download, start_download
from engine.api.runs import (
    RunHandle,
    RunStatus,
    best_checkpoint,
    cancel,
    delete_run,
    find_run,
    list_runs,
    poll,
    request_cancel,
    resume,
    run_log,
    start,
    wait,
)
from engine.chat.infer import ReplyStats
from engine.core.errors import ModelError, UserError
from engine.core.hardware import vram_budget_gib
from engine.core.hub_token import lend_asked as hub_token_lend_asked
from engine.core.hub_token import withhold as withhold_hub_token
from engine.data.formats import parse_map
from engine.models.presets import catalog
from engine.spec.checks import check_settings
from engine.spec.jobspec import DEVICES, DTYPES, OPTIMIZERS, SCHEDULES, USUAL_LR, JobSpec, read_job
from engine.spec.rewards import PRESETS as REWARD_PRESETS

# The choices of the settings that have a fixed list, for forms that offer them.
SETTING_CHOICES = dict(lr_schedule=SCHEDULES, optimizer=OPTIMIZERS, device=DEVICES, dtype=DTYPES)

__all__ = [
    "JobSpec",
    "read_job",
    "check_settings",
    "SETTING_CHOICES",
    "REWARD_PRESETS",
    "USUAL_LR",
    "UserError",
    "ModelError",
    "RunHandle",
    "RunStatus",
    "start",
    "resume",
    "poll",
    "wait",
    "cancel",
    "request_cancel",
    "list_runs",
    "runs_dir",
    "workspace",
    "uploads_dir",
    "WORKSPACE_ENV",
    "safe_name",
    "inspect_data",
    "parse_map",
    "check_data",
    "identity_dataset",
    "save_jsonl",
    "Chat",
    "ReplyStats",
    "sampling_defaults",
    "system_prompt",
    "start_download",
    "poll_download",
    "DownloadStatus",
    "export",
    "EXPORT_FORMATS",
    "doctor",
    "catalog",
    "find_run",
    "estimate",
    "model_arch",
    "adapter_layers",
    "vram_budget_gib",
    "delete_run",
    "run_log",
    "gpu_stats",
    "gpus_found",
    "gpus_for",
    "run_gpus",
    "formats_refused",
    "gguf_support",
    "exported_gguf_files",
    "restrict_files",
    "withhold_hub_token",
    "hub_token_lend_asked",
    "check_access",
    "tidy_workspace",
    "start_export",
    "poll_export",
    "running_exports",
    "cancel_export",
    "ExportJob",
    "ExportStatus",
    "best_checkpoint",
    "evaluate",
    "eval_results",
    "compare_runs",
]
