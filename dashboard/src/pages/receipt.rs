//! What an admin sees after an action: what was recorded, and where each
//! command to a machine stands.

use crate::app::AppState;
use crate::auth::Operator;
use crate::ports::ActionReceipt;
use axum::response::Html;
use maud::html;

pub fn render(
    app: &AppState,
    operator: &Operator,
    host: Option<&str>,
    what: &str,
    receipt: &ActionReceipt,
    back: &str,
) -> Html<String> {
    let body = html! {
        section.panel.receipt {
            h1 { "Done" }
            p { (what) ", recorded in the log at gseq " strong { (receipt.gseq) } " by " (operator.name) "." }
            @if !receipt.commands.is_empty() {
                table {
                    thead { tr { th { "Machine" } th.num { "Command" } th { "Delivery" } } }
                    tbody {
                        @for (machine, command, delivered) in &receipt.commands {
                            tr {
                                td { a href={"/machines/" (machine)} { (machine) } }
                                td.num { "#" (command) }
                                td {
                                    @if *delivered {
                                        span.pill.ok { "sent" } " the machine applies it and records the outcome as its own event"
                                    } @else {
                                        span.pill.warn { "pending" } " the machine is offline; it gets the command when it reconnects"
                                    }
                                }
                            }
                        }
                    }
                }
            }
            p { a href=(back) { "Back" } }
        }
    };
    super::layout(
        app,
        Some(operator),
        host,
        super::Section::None,
        "Done",
        body,
    )
}
