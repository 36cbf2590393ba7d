// Placeholder: the console's build (console/ at the repository root) replaces this file.
document.getElementById("app")?.setAttribute("data-ready", "1");
