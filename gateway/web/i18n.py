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

# The operator console's words (``web.console``); the same invariant: every language, the same keys.
CONSOLE: dict[str, dict[str, str]] = {
    "en": {
        "console": "Operator console", "language": "Language", "skip": "Skip to content",
        "login_title": "Operator log in", "email": "Email", "password": "Password", "log_in": "Log in",
        "log_out": "Log out", "login_failed": "Wrong email or password.", "signed_in_as": "Role: {role}",
        "nav": "Sections", "overview": "Overview", "settlement": "Batches and payouts", "exceptions": "Exceptions",
        "payments": "Payment search", "merchants": "Merchants and terminals", "audit": "Audit log",
        "currency": "Currency", "show": "Show", "last_days": "Last {days} days (UTC)",
        "chart_volume": "Daily volume", "chart_fees": "Fees", "chart_payouts": "Payouts",
        "chart_match": "Bank entries matched (%)", "chart_exceptions": "Exceptions opened",
        "total": "Total", "open_exceptions": "Open exceptions", "no_data": "No data",
        "merchant_id": "Merchant id", "from": "From", "to": "To", "filter": "Filter",
        "batches": "Settlement batches", "payouts": "Payouts", "day": "Business day", "merchant": "Merchant",
        "status": "Status", "captures": "Captures", "refunds": "Refunds", "captured": "Captured", "fees": "Fees",
        "net": "Net", "payout": "Payout", "amount": "Amount", "reference": "Reference",
        "cashback": "Cashback", "cashback_hint": "Merchant-funded cashback its captures paid, less what refunds took back",
        "execution_date": "Execution date", "paid_at": "Paid at", "nothing": "Nothing to show.",
        "kind": "Kind", "bank_amount": "Bank amount", "expected_amount": "Expected amount", "detected": "Detected",
        "actions": "Actions", "reason": "Reason", "write_off": "Write off", "match": "Match by hand",
        "reopen": "Reopen", "match_refs": "Payout or transfer references (comma separated)",
        "all": "All", "open": "Open", "resolved": "Resolved", "cleared": "Cleared",
        "read_only": "Your role can see exceptions but not resolve them.", "done": "Done: {action} on {id}.",
        "payment_id": "Payment id", "merchant_reference": "Merchant reference", "phone": "Wallet phone",
        "date": "Date", "search": "Search", "created": "Created", "refunded": "Refunded",
        "search_hint": "Fill in any of the fields; every one given must match.", "results": "Results",
        "name": "Name", "city": "City", "fee_bps": "Fee (bp)", "terminals": "Terminals", "label": "Label",
        "store": "Store", "device": "Device", "enrolled": "Enrolled",
        "agent_version": "Agent version", "last_seen": "Last seen",
        "at": "When", "operator": "Operator", "action": "Action", "exception": "Exception",
        "statement": "Statement", "details": "Details", "error": "Error",
        "ledger": "Ledger checks", "check_now": "Check the ledger now",
        "check_hint": "Every invariant of the ledger, read in one snapshot by a background worker. While a check"
                      " is queued or running this page refreshes itself; asking again meanwhile answers that check.",
        "check_asked": "Check {id} asked for.", "progress": "Invariants checked", "requested_by": "Requested by",
        "finished": "Finished", "outcome": "Outcome", "queued": "Queued", "running": "Running", "passed": "Passed",
        "failed": "Violations found",
    },
    "zh": {
        "console": "运营控制台", "language": "语言", "skip": "跳到正文",
        "login_title": "运营人员登录", "email": "邮箱", "password": "密码", "log_in": "登录",
        "log_out": "退出登录", "login_failed": "邮箱或密码错误。", "signed_in_as": "角色：{role}",
        "nav": "栏目", "overview": "概览", "settlement": "结算批次与付款", "exceptions": "对账异常",
        "payments": "支付查询", "merchants": "商户与终端", "audit": "审计日志",
        "currency": "币种", "show": "显示", "last_days": "最近 {days} 天（UTC）",
        "chart_volume": "每日交易额", "chart_fees": "手续费", "chart_payouts": "付款",
        "chart_match": "银行流水匹配率（%）", "chart_exceptions": "新增异常",
        "total": "合计", "open_exceptions": "未处理异常", "no_data": "无数据",
        "merchant_id": "商户编号", "from": "起始日期", "to": "截止日期", "filter": "筛选",
        "batches": "结算批次", "payouts": "付款", "day": "营业日", "merchant": "商户",
        "status": "状态", "captures": "收款笔数", "refunds": "退款笔数", "captured": "收款金额", "fees": "手续费",
        "net": "净额", "payout": "付款金额", "amount": "金额", "reference": "参考号",
        "cashback": "商户返现", "cashback_hint": "商户出资的返现，扣除退款收回的部分",
        "execution_date": "执行日期", "paid_at": "付款时间", "nothing": "暂无记录。",
        "kind": "类型", "bank_amount": "银行金额", "expected_amount": "应收付金额", "detected": "发现时间",
        "actions": "操作", "reason": "原因", "write_off": "核销", "match": "手工匹配",
        "reopen": "重新打开", "match_refs": "付款或转账参考号（逗号分隔）",
        "all": "全部", "open": "未处理", "resolved": "已处理", "cleared": "已清除",
        "read_only": "您的角色可以查看异常，但不能处理。", "done": "已完成：{id} 的 {action}。",
        "payment_id": "支付编号", "merchant_reference": "商户订单号", "phone": "钱包手机号",
        "date": "日期", "search": "查询", "created": "创建时间", "refunded": "已退款",
        "search_hint": "填写任意字段；所填字段须全部匹配。", "results": "结果",
        "name": "名称", "city": "城市", "fee_bps": "费率（基点）", "terminals": "终端", "label": "标签",
        "store": "门店", "device": "设备", "enrolled": "注册时间",
        "agent_version": "终端程序版本", "last_seen": "最近在线",
        "at": "时间", "operator": "操作人", "action": "操作", "exception": "异常",
        "statement": "对账单", "details": "详情", "error": "错误",
        "ledger": "账本检查", "check_now": "立即检查账本",
        "check_hint": "后台任务在同一快照中读取账本的全部不变量。检查排队或进行时本页会自动刷新；其间再次发起将返回该检查。",
        "check_asked": "已发起检查 {id}。", "progress": "已检查不变量", "requested_by": "发起人",
        "finished": "完成时间", "outcome": "结果", "queued": "排队中", "running": "进行中", "passed": "通过",
        "failed": "发现违规",
    },
}

assert set(CONSOLE) == set(LANGUAGES)
assert all(set(words) == set(CONSOLE["en"]) for words in CONSOLE.values())
