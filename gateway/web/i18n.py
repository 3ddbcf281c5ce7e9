"""The words of the hosted checkout page, in every language it speaks (``domain.checkout.LANGUAGES``).

Invariant: every language has exactly the same keys (checked at import), so a page never shows a
missing message; ``{merchant}``-style fields are filled by the template, which escapes them.
"""

from __future__ import annotations

from gateway.domain.checkout import LANGUAGES

MESSAGES: dict[str, dict[str, str]] = {
    "en": {
        "title": "Pay {merchant}",
        "language": "Language",
        "pay_to": "Pay",
        "amount": "Amount",
        "scan": "Scan the code with your wallet app to pay.",
        "qr_alt": "QR code to pay {amount} {currency} to {merchant}",
        "waiting": "Waiting for your payment…",
        "action": "Confirm the payment in your wallet app.",
        "paid": "Payment received. Taking you back to the shop…",
        "still_waiting": "Still waiting. Reload the page to check again.",
        "reload": "Check again",
        "expires": "This code is valid until {time} UTC.",
        "expired_title": "This payment has expired",
        "expired_text": "Nothing was charged. Go back to the shop to start again.",
        "canceled_title": "This payment was cancelled",
        "canceled_text": "Nothing was charged.",
        "paid_title": "This payment is complete",
        "back_to_shop": "Back to the shop",
        "cancel": "Cancel and go back to the shop",
        "not_found_title": "Page not found",
        "not_found_text": "This checkout link is not valid. Ask the shop for a new one.",
        "noscript": "This page updates by itself with JavaScript; without it, reload it after paying.",
    },
    "zh": {
        "title": "向{merchant}付款",
        "language": "语言",
        "pay_to": "付款给",
        "amount": "金额",
        "scan": "请用钱包应用扫描二维码付款。",
        "qr_alt": "向{merchant}支付 {amount} {currency} 的二维码",
        "waiting": "正在等待付款…",
        "action": "请在钱包应用中确认付款。",
        "paid": "付款成功，正在返回商店…",
        "still_waiting": "仍在等待。请刷新页面再次查看。",
        "reload": "再次查看",
        "expires": "二维码有效期至 {time}（UTC）。",
        "expired_title": "此付款已过期",
        "expired_text": "未扣款。请返回商店重新下单。",
        "canceled_title": "此付款已取消",
        "canceled_text": "未扣款。",
        "paid_title": "此付款已完成",
        "back_to_shop": "返回商店",
        "cancel": "取消并返回商店",
        "not_found_title": "页面不存在",
        "not_found_text": "此付款链接无效。请向商店索取新的链接。",
        "noscript": "本页面通过 JavaScript 自动更新；如未启用，请在付款后刷新页面。",
    },
}
LANGUAGE_NAMES = {"en": "English", "zh": "中文"}

assert set(MESSAGES) == set(LANGUAGES) == set(LANGUAGE_NAMES)
assert all(set(words) == set(MESSAGES["en"]) for words in MESSAGES.values())
