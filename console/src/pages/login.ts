// The login page: name and password, sent once to POST /v1/login in cookie mode. The password
// field is emptied whatever the answer; nothing typed here is kept.

import { login } from "../api";
import { field, h } from "../dom";
import { afterLoginPage, go } from "../route";
import { frame, type PageCtx } from "../ui";

export function loginPage(ctx: PageCtx): void {
  const msgs = frame(ctx, "Log in to warden");
  const name = h("input", { name: "username", autocomplete: "username", required: true, maxlength: 64 });
  const password = h("input", { type: "password", name: "password", autocomplete: "current-password", required: true });
  const submit = h("button", { type: "submit", class: "primary" }, "Log in");
  const form = h(
    "form",
    { class: "login", novalidate: true },
    field("Name", name),
    field("Password", password),
    h("div", { class: "buttons" }, submit),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    msgs.clear();
    if (!name.value || !password.value) {
      msgs.error("Enter your name and password.");
      (name.value ? password : name).focus();
      return;
    }
    submit.disabled = true;
    try {
      await login(name.value, password.value);
      password.value = "";
      go(afterLoginPage());
    } catch (err) {
      password.value = "";
      msgs.error(err);
      password.focus();
    } finally {
      submit.disabled = false;
    }
  });
  ctx.root.appendChild(form);
  name.focus();
}
