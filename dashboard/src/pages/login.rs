//! The login form.

use crate::app::AppState;
use axum::response::Html;
use maud::html;

pub fn render(app: &AppState, next: &str, csrf: &str, message: Option<&str>) -> Html<String> {
    let body = html! {
        form.login method="post" action="/login" {
            h1 { "Log in" }
            p.sub { "Operators' dashboard of " (app.snapshot().status.id) }
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="next" value=(next);
            label for="user" { "Name" }
            input #user type="text" name="user" autocomplete="username" required autofocus maxlength="32";
            label for="password" { "Password" }
            input #password type="password" name="password" autocomplete="current-password" required maxlength="256";
            @if let Some(message) = message {
                p.message { (message) }
            }
            button type="submit" { "Log in" }
        }
    };
    super::layout(app, None, None, super::Section::None, "Log in", body)
}
