"""Generate the bundled example task: support tickets -> a JSON triage object.

Reproducible (fixed seed), with varied wording, so that evaluation measures
whether the model learned the task rather than memorized strings:

    python examples/make_tickets.py --rows 600 --out examples/data/tickets.jsonl
    python examples/make_tickets.py --rows 400 --tools --out examples/data/tickets_tools.jsonl

Each row is a chat: a system prompt, the ticket as the user turn, and the
answer as one line of JSON: {"category": ..., "priority": ..., "summary": ...}.
The category follows from what the ticket is about; the priority from its
urgency cues; the summary is one short line.

With --tools, the same triage is a function call: the assistant calls
create_ticket(category, priority, summary) (declared in data/tickets_tools.json,
which the config names as data.tools), the tool answers with the ticket's id,
and the assistant tells the user.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SYSTEM = "Triage the support ticket. Reply with JSON: category, priority, summary."
TOOLS_SYSTEM = "Triage the support ticket: file it with create_ticket, then tell the user its id."
CREATE_TICKET = {"type": "function", "function": {
    "name": "create_ticket", "description": "File a support ticket in the tracker.",
    "parameters": {"type": "object", "properties": {
        "category": {"type": "string", "enum": ["billing", "account", "bug", "feature_request"]},
        "priority": {"type": "string", "enum": ["low", "medium", "high"]},
        "summary": {"type": "string", "description": "One short line."}},
        "required": ["category", "priority", "summary"]}}}

PRODUCTS = ["the mobile app", "the web dashboard", "the desktop client", "the API", "the reports page",
            "the checkout page", "the admin console", "the calendar view", "the search bar", "the export tool"]
PLATFORMS = ["Android", "iOS", "Windows", "macOS", "Linux", "Chrome", "Firefox", "Safari"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
FEATURES = ["dark mode", "keyboard shortcuts", "a CSV import", "two-factor login with a hardware key",
            "Slack notifications", "a German translation", "bulk editing", "custom fields", "SSO with Okta",
            "an offline mode", "recurring invoices", "a public status page"]

# (category, summary template, ticket templates); {x} slots are filled from the lists above.
TOPICS = [
    ("billing", "Charged twice for the {month} invoice",
     ["I was charged twice for my {month} invoice.", "My card shows two payments for {month}.",
      "Looks like you billed me two times this {month}."]),
    ("billing", "Asks for a refund of {amount} dollars",
     ["I'd like a refund of ${amount} for the unused part of my plan.",
      "Please refund the ${amount} you took after I cancelled.",
      "Can I get my ${amount} back? I downgraded last week."]),
    ("billing", "Needs to update an expired card",
     ["My credit card expired, where do I put the new one?", "How do I change the card you charge each month?",
      "The payment failed because my card is out of date."]),
    ("account", "Cannot log in, reset email not arriving",
     ["I can't log in and the password reset email never arrives.",
      "Locked out of my account, no reset mail in my inbox or spam.",
      "Password reset link doesn't come through, I can't sign in."]),
    ("account", "Wants to change the account email",
     ["How do I change the email address on my account?", "I need my login email switched to a new address.",
      "Please move my account to my work email."]),
    ("account", "Requests account deletion",
     ["Please delete my account and all my data.", "I want my account closed and my data removed.",
      "How do I permanently remove my profile?"]),
    ("bug", "{product} crashes on {platform}",
     ["{product_cap} crashes every time I open it on {platform}.",
      "On {platform}, {product} closes by itself right after start.",
      "{product_cap} keeps crashing on my {platform} machine."]),
    ("bug", "{product} is very slow",
     ["{product_cap} takes forever to load, like a minute per page.",
      "Everything in {product} became extremely slow since yesterday.",
      "{product_cap} is so slow it is barely usable."]),
    ("bug", "Export drops the last row",
     ["When I export to CSV the last row of the table is missing.",
      "The CSV export always leaves out the final line.", "Exported files are missing the bottom row of data."]),
    ("feature_request", "Asks for {feature}",
     ["Could you add {feature}?", "It would be great to have {feature}.", "Any plans to support {feature}?",
      "Our team would really like {feature}."]),
]
HIGH = ["This is urgent, our whole team is blocked.", "We can't work at all right now!",
        "Production is affected, please help asap.", "This is critical for us today."]
# Each priority is stated by the ticket. Medium had "" (no cue: the label was a convention the text did not
# carry) and "It's annoying but we have a workaround." (read as low as often as medium): the fine-tune confused
# medium with low on exactly those, and the bare base had no way to know.
MEDIUM = ["Please look into it this week.", "Somewhat urgent, it slows a few of us down.",
          "Would appreciate a fix soon.", "Medium priority, please handle it in the next few days."]
LOW = ["No rush, whenever you get a chance.", "Just curious, not urgent at all.",
       "Low priority, only a small thing.", "Not a big deal, just wanted to mention it."]
OPENERS = ["", "Hi, ", "Hello team, ", "Hey there. ", "Good morning, ", "Dear support, "]
CLOSERS = ["", " Thanks.", " Thank you!", " Regards, Sam", " Cheers"]


def make_row(rng: random.Random) -> dict:
    category, summary_tpl, tickets = rng.choice(TOPICS)
    priority, cues = rng.choice([("high", HIGH), ("medium", MEDIUM), ("low", LOW)])
    slots = {"month": rng.choice(MONTHS), "amount": rng.choice([12, 19, 29, 49, 99, 120, 240]),
             "product": rng.choice(PRODUCTS), "platform": rng.choice(PLATFORMS), "feature": rng.choice(FEATURES)}
    slots["product_cap"] = slots["product"][0].upper() + slots["product"][1:]
    body = rng.choice(tickets).format(**slots)
    cue = rng.choice(cues)
    opener = rng.choice(OPENERS)
    if opener.endswith(", "):
        body = body[0].lower() + body[1:]
    ticket = f"{opener}{body} {cue}".strip() + rng.choice(CLOSERS)
    summary = summary_tpl.format(**slots)
    summary = summary[0].upper() + summary[1:]
    answer = json.dumps({"category": category, "priority": priority, "summary": summary})
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ticket},
                         {"role": "assistant", "content": answer}]}


def as_tool_call(row: dict, rng: random.Random) -> dict:
    """The same ticket, triaged by calling create_ticket."""
    _, user, answer = row["messages"]
    arguments = json.loads(answer["content"])
    ticket_id = f"T-{rng.randrange(1000, 10000)}"
    return {"messages": [
        {"role": "system", "content": TOOLS_SYSTEM}, user,
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "create_ticket", "arguments": arguments}}]},
        {"role": "tool", "content": json.dumps({"id": ticket_id, "status": "open"})},
        {"role": "assistant", "content": f"Filed {ticket_id} ({arguments['category']}, {arguments['priority']} "
                                         f"priority): {arguments['summary']}."}]}


def make_rows(n: int, *, seed: int = 7, tools: bool = False) -> list[dict]:
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        row = make_row(rng)
        if tools:
            row = as_tool_call(row, rng)
        key = json.dumps(row, sort_keys=True)
        if key not in seen:  # exact duplicates would be reported by `packager data check`
            seen.add(key)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--tools", action="store_true", help="triage as a create_ticket call (and write its tools)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "tickets.jsonl")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = make_rows(args.rows, seed=args.seed, tools=args.tools)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {args.rows} rows to {args.out}")
    if args.tools:
        tools = args.out.with_suffix(".json")
        tools.write_text(json.dumps([CREATE_TICKET], indent=2) + "\n")
        print(f"wrote the tools they call to {tools}")


if __name__ == "__main__":
    main()
