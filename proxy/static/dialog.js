// The detail view (a pipeline run, an issue): one modal <dialog>; Escape or the close button closes it and
// focus returns to the control that opened it.

import { $, failed, h, replace } from "./dom.js";

let opener = null;

export function initDialog() {
  const dialog = $("detail");
  $("detail-close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("close", () => {
    if (opener && document.contains(opener)) opener.focus();
    opener = null;
  });
  // A click on the backdrop (outside the panel) closes too.
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close();
  });
}

// Open with a title, then fill the body with what `build` resolves to (a node), or an error message.
export async function openDetail(title, build) {
  const dialog = $("detail");
  opener = document.activeElement;
  $("detail-title").textContent = title;
  const body = $("detail-body");
  replace(body, h("p", { class: "muted" }, "Loading…"));
  if (!dialog.open) dialog.showModal();
  try {
    replace(body, await build());
  } catch (err) {
    replace(body, failed(err));
  }
}
