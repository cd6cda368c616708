"""Handlers of the run store's lists: the run picker and the Runs table, open and delete."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from accel.errors import UserError
from accel.ui.common import event_handler, run_store
from viz import panels


@event_handler
def run_lists():
    """The run picker's choices and the Runs table, fresh from the store; what is picked or selected stays."""
    store = run_store()
    return gr.update(choices=panels.run_choices(store)), panels.runs_table(store)


def open_selected(run_id: str | None):
    """Show the run selected in the Runs table; with none selected (yet), keep the run shown and say so."""
    if not run_id:
        return gr.update(), "select a run in the table first"
    return gr.update(choices=panels.run_choices(run_store()), value=run_id), ""


def runs_select(table: pd.DataFrame, evt: gr.SelectData) -> str:
    """The run id of the clicked row of the Runs table."""
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    return str(table.iloc[int(row)]["run"])


@event_handler
def delete_run(run_id: str, confirm: bool, shown: str | None = None):
    """Delete a run once the box is ticked; the lists refresh, and the run ``shown`` in the views stays unless it
    was the one deleted (then every view shows its empty state)."""
    if not run_id:
        raise UserError("select a run in the table first")
    if not confirm:
        raise UserError(f"tick 'confirm delete' to delete {run_id}")
    run_store().delete(run_id)
    table, choices = panels.runs_table(run_store()), panels.run_choices(run_store())
    keep = shown if shown != run_id and shown in {c[1] for c in choices} else None
    return table, "", False, gr.update(choices=choices, value=keep), f"Deleted {run_id}."
