"""Train tab: settings, Start and Cancel, a live view polled from the run folder, and the run history."""

import gradio as gr
import pandas as pd

from engine import api
from ui.data_tab import parse_mapping


def make_spec(
    model,
    method,
    trust,
    data,
    mapping,
    template,
    data_config,
    data_split,
    seq,
    name,
    steps,
    epochs,
    lr,
    batch,
    accum,
    rank,
    packing,
) -> api.JobSpec:
    """The JobSpec for the values on the Model, Data and Train tabs (in the order `build` wires them)."""
    if not model:
        raise api.UserError("Pick a model in the Model tab first.")
    if not data:
        raise api.UserError("Choose a dataset in the Data tab first.")
    return api.JobSpec(
        model=model,
        data=data,
        name=name or "run",
        method=method,
        trust_remote_code=bool(trust),
        column_map=parse_mapping(mapping),
        chat_template=template,
        data_config=data_config or "",
        data_split=data_split or "train",
        max_seq_length=int(seq),
        max_steps=int(steps),
        epochs=float(epochs),
        learning_rate=float(lr),
        batch_size=int(batch),
        grad_accum=int(accum),
        lora_r=int(rank),
        lora_alpha=int(rank),
        packing=bool(packing),
    )


def start(*args):
    """Start a run; returns (run id, status line, timer)."""
    try:
        busy = [r.run_id for r in api.list_runs() if not r.finished]
        if busy:
            raise api.UserError(f"Run {busy[0]} is still training; cancel it or wait for it to finish.")
        handle = api.start(make_spec(*args))
    except api.UserError as e:
        return "", f"**Not started:** {e}", gr.Timer(active=False)
    return handle.run_id, f"Started run `{handle.run_id}`…", gr.Timer(active=True)


def view(run_id: str):
    """(status markdown, progress table for the plot, timer) of a run."""
    if not run_id:
        return "No run yet.", pd.DataFrame({"step": [], "loss": []}), gr.Timer(active=False)
    try:
        st = api.poll(run_id)
    except api.UserError as e:
        return str(e), pd.DataFrame({"step": [], "loss": []}), gr.Timer(active=False)
    lines = [f"**{st.state}** · step {st.step}/{st.total_steps or '?'} · {st.message}"]
    if st.metrics:
        m = st.metrics[-1]
        lines.append(
            f"loss {m['loss']:.4f} · lr {m['lr']:.2e} · grad norm {m['grad_norm']:.3f} · "
            f"{m['tokens_per_s']:.0f} tokens/s · memory {m['memory_gb']:.2f} GB · ETA {m['eta_s']:.0f} s"
        )
    if st.state == "failed":
        lines.append(f"The full log is in `{st.run_dir / 'log.txt'}`.")
    frame = pd.DataFrame({"step": [m["step"] for m in st.metrics], "loss": [m["loss"] for m in st.metrics]})
    return "\n\n".join(lines), frame, gr.Timer(active=not st.finished)


def cancel(run_id: str) -> str:
    if not run_id:
        return "No run to cancel."
    st = api.cancel(run_id)
    return f"**{st.state}** · {st.message}"


def history() -> list[list]:
    return [
        [r.run_id, r.state, f"{r.step}/{r.total_steps}", r.model, f"{r.loss:.4f}" if r.loss else ""]
        for r in api.list_runs()
    ]


def resume(run_id: str):
    try:
        handle = api.resume(run_id)
    except api.UserError as e:
        return run_id, f"**Not resumed:** {e}", gr.Timer(active=False)
    return handle.run_id, f"Resumed run `{handle.run_id}`…", gr.Timer(active=True)


def build(model_inputs: list, data_inputs: list) -> dict:
    """`model_inputs`: model, method, trust; `data_inputs`: dataset, mapping, template, config, split, max length."""
    with gr.Tab("Train"):
        name = gr.Textbox("my-run", label="Run name")
        with gr.Row():
            steps = gr.Number(60, label="Steps (0: use epochs)", precision=0)
            epochs = gr.Number(1, label="Epochs")
            lr = gr.Number(2e-4, label="Learning rate")
        with gr.Accordion("Advanced", open=False):
            with gr.Row():
                batch = gr.Number(2, label="Batch size", precision=0)
                accum = gr.Number(4, label="Gradient accumulation", precision=0)
                rank = gr.Number(16, label="LoRA rank (alpha = rank)", precision=0)
                packing = gr.Checkbox(False, label="Pack short examples (faster; the max length is on the Data tab)")
        with gr.Row():
            start_btn = gr.Button("Start training", variant="primary")
            cancel_btn = gr.Button("Cancel", variant="stop")
        run_id = gr.Textbox(label="Run", interactive=False)
        status = gr.Markdown("No run yet.")
        plot = gr.LinePlot(pd.DataFrame({"step": [], "loss": []}), x="step", y="loss", label="Loss")
        timer = gr.Timer(1.0, active=False)
        with gr.Accordion("Run history", open=False):
            table = gr.Dataframe(headers=["run", "state", "step", "model", "loss"], value=history(), interactive=False)
            with gr.Row():
                refresh = gr.Button("Refresh")
                resume_btn = gr.Button("Resume the run above")
    inputs = model_inputs + data_inputs + [name, steps, epochs, lr, batch, accum, rank, packing]
    start_btn.click(start, inputs, [run_id, status, timer])
    timer.tick(view, run_id, [status, plot, timer])
    cancel_btn.click(cancel, run_id, status)
    refresh.click(history, None, table)
    resume_btn.click(resume, run_id, [run_id, status, timer])
    return dict(
        name=name,
        steps=steps,
        epochs=epochs,
        lr=lr,
        packing=packing,
        batch=batch,
        accum=accum,
        rank=rank,
        start=start_btn,
        cancel=cancel_btn,
        run_id=run_id,
        status=status,
        plot=plot,
        timer=timer,
        table=table,
    )
