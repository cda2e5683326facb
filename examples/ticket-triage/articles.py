"""Hearthly help-centre articles, written to ``docs/<slug>.md`` by ``generate.py``.

They are the knowledge the RAG rung retrieves: the triage rules (what each category covers, what
each priority means, when to escalate) and the policies the tickets refer to (refund windows,
shipping times per region, plan limits, 2FA recovery, ...). Each is 80-250 words.
"""

from __future__ import annotations

ARTICLES: dict[str, tuple[str, str]] = {
    "sla-and-priority-levels": (
        "Support priorities and response times (SLA)",
        """
Every ticket gets one priority. The priority reflects the impact on the customer, not how the
message is worded: a customer writing "URGENT" about a shipping question is still **low**.

- **high** (first reply within 1 hour, 24/7): a service outage or every device offline; a
  security problem such as a hacked account or someone else viewing cameras; a safety risk (a
  thermostat stuck on heat, a device that sparks, smokes or overheats, a swollen battery); money
  taken wrongly (double charge, unauthorised charge, charge after cancelling); a Business account
  that cannot operate; lost recordings needed for police or insurance; a legal threat, a
  chargeback threat or a complaint to a regulator; a third contact about the same unresolved issue.
- **medium** (first reply within 8 business hours): something is broken or blocked for one customer
  and there is no risk to safety, security or money: a device offline, the app crashing, a
  failed payment, a late or damaged parcel, a return or refund in progress, a 2FA reset.
- **low** (first reply within 2 business days): questions, how-to requests, feedback, cosmetic
  glitches and feature ideas.
""",
    ),
    "triage-categories": (
        "Ticket categories and borderline cases",
        """
Agents file every ticket under one category.

- **billing**: anything about app subscriptions (Free, Plus, Pro, Business): charges, invoices,
  payment methods, plan changes, promo codes, and money back for a subscription.
- **account**: signing in, passwords, two-factor authentication, profile settings, shared access,
  account deletion and personal-data requests.
- **bug**: the app, the website or a device does not work as it should, including outages.
- **feature_request**: ideas and requests for something the product does not do yet.
- **shipping**: store orders on their way: delivery times, tracking, address changes, lost,
  late, wrong or damaged parcels where the customer wants the item.
- **refund**: returns, refunds and cancellations of store (hardware) orders.

Borderline rules: a refund for a *subscription* is billing, a refund for a *device* is refund. A
parcel damaged in transit is shipping when the customer wants a replacement and refund when they
want their money back. A login page that errors for everyone is a bug; one customer who cannot pass
their own password or 2FA is account. "Is it a bug that X is missing?" is a feature_request.
""",
    ),
    "escalation-rules": (
        "When to escalate a ticket",
        """
Some situations raise a ticket to **high** whatever its topic:

1. The customer mentions a lawyer, legal action, a chargeback or bank dispute, a consumer
   protection agency or a data protection authority.
2. It is the customer's third contact about the same unresolved problem ("this is the third time
   I'm writing", "Re: Re: Re:" with no answer).
3. A risk to physical safety: heat, smoke, sparks, burning smell, a swollen battery, a home left
   without heating in cold weather.
4. Another customer's personal data has been exposed (a parcel with someone else's details, a used
   device with footage on it).
5. A Business plan customer cannot operate any of their sites.

The tone of the message is not a reason to escalate. Angry customers with a question stay low;
polite customers describing a double charge are high. Escalated tickets go to the senior queue and
the customer is told who owns the case.
""",
    ),
    "multiple-issues-in-one-ticket": (
        "Tickets that raise several issues",
        """
Customers often mention more than one problem, for example a camera that keeps going offline and,
at the end, an idea for a new feature. Triage the ticket by its **most urgent** issue: use that
issue's category and priority. If two issues are equally urgent, use the one mentioned first.

Examples:
- "I was charged twice this month. Also, could you add dark mode?" is billing, high.
- "Where's my parcel? P.S. is HomeKit on the roadmap?" is shipping, medium.
- "How do I download invoices? Also my doorbell stopped recording." is bug, medium.

The agent who picks up the ticket answers every issue in one reply, and opens a separate
internal note for the secondary issue when it needs another team.
""",
    ),
    "refund-policy": (
        "Refund policy for store orders",
        """
Hardware bought from the Hearthly store can be returned within **30 days of delivery** for a full
refund, opened or not, as long as all parts are included. After 30 days, defective devices are
covered by the warranty (repair or replacement, not money back).

Refunds go to the original payment method. Shipping costs are refunded only when the item was
defective, damaged or wrong. A gift can be refunded to the buyer or as store credit to the
recipient. Sale items are refundable like any other; we do not refund price drops after purchase.

Subscription charges are not covered by this policy: see "Cancelling or changing your
subscription". Questions about the policy are low priority; an actual return or refund request is
medium; a refund tied to a safety problem or a chargeback threat is high.
""",
    ),
    "returning-an-item": (
        "How to return an item",
        """
1. Open **Orders** in your Hearthly account and choose *Return an item* next to the order.
2. Pick the items and a reason. Multi-packs can be returned in part (one camera from a 2-pack).
3. Print the prepaid label (free for defective, damaged or wrong items; $6.95 otherwise, deducted
   from the refund) and drop the parcel at the carrier shown on the label.
4. Remove the device from your app first, so the next owner can set it up.

Returns are checked within 3 business days of arriving at our warehouse. You get an e-mail when the
refund is issued. Exchanges for another colour are handled as a return plus a new order.
""",
    ),
    "refund-timelines": (
        "How long refunds take",
        """
Once a return is checked at our warehouse (up to 3 business days after delivery to us), we issue
the refund the same day. How long it then takes to show on your statement depends on the payment
method:

- credit and debit cards: 5-10 business days;
- PayPal: 1-3 business days;
- Apple Pay and Google Pay: same as the underlying card;
- store credit: immediately.

If more than 14 business days have passed since the return tracking shows "delivered" and no
refund has arrived, contact us with the order number: it is a medium-priority refund ticket. A
partial refund usually means a return shipping fee or a missing part was deducted; the refund
e-mail lists the deductions.
""",
    ),
    "cancelling-an-order": (
        "Cancelling a store order",
        """
An order can be cancelled from **Orders > Cancel** until it is packed, usually within 2 hours of
purchase. After that, ask support: we can often stop it before it leaves the warehouse. A cancelled
order is refunded in full to the original payment method.

Once an order has shipped it can no longer be cancelled; refuse the delivery or return it under
the 30-day refund policy. Order cancellation requests are filed under **refund**, medium priority.
If you only want to change the address of an order, see "Changing a delivery address" instead,
which is a shipping request.
""",
    ),
    "damaged-or-defective-items": (
        "Damaged or defective items",
        """
**Damaged in transit** (crushed box, cracked casing, wet parcel): send photos of the box and the
item within 7 days of delivery. We ship a free replacement; no need to return the damaged one. These
tickets are shipping, medium priority. If the customer asks for their money back instead of a
replacement, the ticket is a refund.

**Defective after use** (a device that stops working): try the troubleshooting steps first; a
device that still fails is replaced under warranty, which is a bug ticket. Within 30 days of
delivery the customer may choose a refund instead.

**Unsafe devices** (swelling battery, sparks, melting adapter, burning smell): tell the customer to
unplug the device and stop using it. These are always high priority.
""",
    ),
    "warranty": (
        "Hearthly hardware warranty",
        """
All Hearthly devices carry a **2-year limited warranty** from the delivery date (3 years in the EU
and the UK for the thermostat). It covers defects in materials and workmanship under normal use. It
does not cover damage from drops, water (for indoor devices), power surges or unauthorised repairs.

Warranty claims are handled as replacements, not refunds, once the 30-day return window has
passed. To claim, contact support with the serial number from the app (**Device > About**) and a
short description of the fault. We may ask for a video of the problem. Replacement devices ship
within 2 business days and come with a prepaid label for the faulty unit.
""",
    ),
    "shipping-times-by-region": (
        "Shipping times by region",
        """
Orders placed before 2 pm local warehouse time ship the same business day. Delivery times after
dispatch:

| Region | Standard | Express |
| --- | --- | --- |
| United States | 3-5 business days | 1-2 days |
| Canada | 5-8 business days | 2-3 days |
| United Kingdom | 3-6 business days | 1-2 days |
| European Union | 4-9 business days | 2-4 days |
| Australia and New Zealand | 7-12 business days | 4-6 days |

Standard shipping is free over $75. Express is not available to PO boxes. During the December
holidays add 2-3 days. Questions about delivery times are low priority; an order that is past the
latest date above is a lost or late parcel (medium).
""",
    ),
    "tracking-your-order": (
        "Tracking your order",
        """
You get a shipping confirmation e-mail with a tracking link as soon as the order leaves the
warehouse. The same link is under **Orders** in your account, which lists every past order. The
carrier depends on the destination: UPS or USPS in the US, Canada Post in Canada, Royal Mail or """
        """DPD in
the UK, DHL in the EU and Australia Post in Australia and New Zealand.

Tracking can take up to 24 hours to show the first scan. If the link does not open, copy the
tracking number into the carrier's own website. No confirmation e-mail after 2 business days
usually means it went to spam. Questions about tracking are low priority.
""",
    ),
    "lost-or-late-parcels": (
        "Lost, late or missing parcels",
        """
**Marked as delivered but not received**: check with neighbours and around the property and wait
48 hours, since carriers sometimes scan early. Then contact us and we open a trace with the
carrier.

**Late**: a parcel is considered lost when tracking has not moved for 5 business days, or when it is
more than 5 business days past the latest delivery date for the region. We then reship the order
free of charge or refund it, as the customer prefers.

**Returned to sender or stuck in customs**: we contact the carrier and tell the customer within 2
business days what happens next.

All of these are shipping tickets, medium priority. They become high on the third contact about the
same parcel or when the customer threatens a chargeback.
""",
    ),
    "changing-delivery-address": (
        "Changing a delivery address",
        """
Addresses can be edited under **Orders** until the order is packed. After that, contact support as
soon as possible with the order number and the new address: if the parcel has not left the
warehouse we change it ourselves; if it has, we ask the carrier to redirect it, which works for
most carriers in the US, UK and EU but may add 1-2 days.

We cannot redirect parcels to another country. Address change requests are shipping tickets,
medium priority, because the window to act is short.
""",
    ),
    "international-shipping-and-customs": (
        "International shipping and customs",
        """
We ship to the United States, Canada, the United Kingdom, every EU country, Norway, Switzerland,
Australia and New Zealand. We do not yet ship to Mexico, Brazil, Japan, South Africa, Israel or
Iceland; a local reseller list is on the store page.

Prices for the UK, the EU, Norway and Switzerland include import duties and VAT, so nothing is
due on delivery. Canadian, Australian and New Zealand orders over the local threshold may be
charged duties by the carrier. A parcel held in customs for more than 5 business days is treated
as a late parcel. Questions about where we ship are low priority.
""",
    ),
    "subscription-plans-and-limits": (
        "Subscription plans and limits",
        """
| Plan | Price | Cameras | Video history | Extras |
| --- | --- | --- | --- | --- |
| Free | $0 | live view only | none | motion alerts |
| Plus | $4.99/month | up to 4 | 30 days | person detection |
| Pro | $9.99/month | unlimited | 60 days | package detection, priority support |
| Business | $29/month per site | unlimited | 90 days | team seats, audit log, SSO |

Yearly billing saves two months. The thermostat, plugs and light strip work fully on the Free plan;
plans only add video features. When you downgrade, recordings older than the new plan's history
are deleted after 7 days. Students get 30% off Plus and Pro with a verified school e-mail.
Plan questions are billing, low priority.
""",
    ),
    "billing-cycle-and-invoices": (
        "Billing cycle and invoices",
        """
Subscriptions renew on the same day each month (or year) as the first payment; the date is under
**Account > Subscription**. Every payment produces a PDF invoice in """
        """**Account > Invoices**, which keeps
seven years of history.

To show a company name, address or VAT number on invoices, add them under **Billing details**
before the next renewal; past invoices can be reissued by support. EU customers with a valid VAT
number are not charged VAT. Requests for invoice copies are low priority.

If an invoice amount looks wrong, compare it with the plan price and any plan change you made that
month: upgrades are charged pro rata at once. An unexplained difference is a medium billing ticket.
""",
    ),
    "payment-methods-and-failed-payments": (
        "Payment methods and failed payments",
        """
We accept Visa, Mastercard, American Express, PayPal, Apple Pay and Google Pay. Business plans can
also pay yearly by bank transfer. Anyone's card can pay for a subscription. Update the card
under **Account > Billing** at any time; the next renewal uses the new method.

If a payment fails we retry on days 1, 3 and 7 and e-mail you each time. Your plan keeps working
for a **7-day grace period**. After that, the account falls back to Free and recordings older
than 24 hours are kept for 30 more days in case you resubscribe.

A failed payment is a medium billing ticket. For a Business account, losing recording on all
sites is high priority: support can extend the grace period while the payment is fixed.
""",
    ),
    "double-and-unrecognised-charges": (
        "Double or unrecognised charges",
        """
A charge that appears twice, a charge the customer does not recognise, and a charge after a
confirmed cancellation are **high priority billing** tickets: money has been taken wrongly.

First check whether one of the two is a pending authorisation: when a card is updated we place a
$1 hold that disappears within 5 days. If both charges are posted, refund the duplicate at once;
it shows on the statement in 5-10 business days.

An unrecognised charge may come from a family member's account or an old account still on the
card; search by the last four digits of the card. If the customer says they did not authorise it,
also treat the account as possibly compromised and follow "Hacked or compromised account".
Card statements show us as HEARTHLY*SUBSCR (subscriptions) or HEARTHLY STORE (hardware).
""",
    ),
    "cancelling-or-changing-your-subscription": (
        "Cancelling or changing your subscription",
        """
Cancel under **Account > Subscription > Cancel**. The plan stays active until the end of the period
already paid, and you get a confirmation e-mail; keep it. """
        """Turning off auto-renew has the same effect.

Upgrades take effect immediately and are charged pro rata. Downgrades take effect at the next
renewal. Switching from monthly to yearly billing credits the unused part of the month.

Refunds for subscriptions are billing tickets (not refund tickets): we refund a renewal charged in
the last 7 days if the paid features were not used, a forgotten trial, and an accidental yearly
purchase. A charge after a confirmed cancellation is a billing error and high priority. Returning a
camera does not cancel a subscription.
""",
    ),
    "promo-codes-and-discounts": (
        "Promo codes and discounts",
        """
Promo codes are entered at checkout (store) or under **Account > Subscription > Redeem** (plans).
One code per order. Codes are case-insensitive and have an expiry date printed in the e-mail that
sent them. Newsletter codes give 10% off hardware; seasonal codes vary.

The student discount (30% off Plus and Pro) is applied after verification of a school e-mail and
cannot be combined with other codes. Codes cannot be applied after purchase. If a valid, unexpired
code is rejected, send the code and a screenshot: this is a low-priority billing ticket.
""",
    ),
    "resetting-your-password": (
        "Resetting your password",
        """
Use **Forgot password** on the sign-in screen. The reset e-mail comes from no-reply@hearthly.com
within 5 minutes; check spam and promotions folders. The link is valid for 30 minutes and only the
most recent link works, so requesting several e-mails invalidates the earlier ones.

If the e-mail never arrives, the account may use a different address: try any old addresses. If the
link says "expired" immediately, open it in the same browser where you requested it.

After 5 wrong passwords the account is locked for 30 minutes. A customer who cannot reset their
password is a medium account ticket. If they believe someone else changed the password, follow
"Hacked or compromised account" (high).
""",
    ),
    "two-factor-authentication": (
        "Two-factor authentication and recovery",
        """
Turn on 2FA under **Account > Security**. You can choose SMS codes or an authenticator app, and you
get 10 one-time recovery codes; store them safely. Hardware security keys are not supported yet.

**Lost phone or authenticator**: sign in with a recovery code, then set up 2FA again. Without
recovery codes, support resets 2FA after verifying identity: the e-mail on the account plus either
an order number, the last four digits of the card on file, or a device serial number. Resets take
up to 1 business day. "Invalid code" errors are usually a phone clock that is not set automatically.

2FA resets are medium priority account tickets. If 2FA was switched off and the customer did not do
it, the account is compromised: high priority.
""",
    ),
    "hacked-or-compromised-account": (
        "Hacked or compromised account",
        """
Signs: a login alert the customer does not recognise, a password or e-mail changed without them,
2FA turned off, unknown devices under **Account > Sessions**, or someone viewing their cameras.

These are **high priority** account tickets, because cameras show the inside of people's homes. The
agent immediately: signs out every session, locks the account, disables shared access, and sends a
recovery link to the verified e-mail on file (or the original e-mail, if it was changed in the last
72 hours). Then the customer sets a new password and turns on 2FA.

If payments were made from the account, open a billing note for refunds. Never discuss account
details with someone who cannot verify ownership.
""",
    ),
    "changing-email-and-profile": (
        "Changing your e-mail, name or profile",
        """
Profile settings are under **Account > Profile**: display name, photo, language and time zone. The
app is available in English, French, German, Spanish, Italian, Dutch and Japanese; other languages
are on the roadmap. A home can be renamed under **Home > Settings**, and one account can hold
several homes.

To change your sign-in e-mail, enter the new address and click the link we send to it within 24
hours. If you can no longer open the old mailbox, support can change it after verifying identity
(as for a 2FA reset). Profile questions are low priority; a failed e-mail change is medium.
""",
    ),
    "deleting-your-account-and-data": (
        "Deleting your account and personal-data requests",
        """
Delete your account under **Account > Privacy > Delete account**. Video is erased immediately and
everything else within 30 days, except invoices we must keep for tax purposes. Devices should be
removed first so they can be set up again.

Customers can also request a copy of their data (a subject access request) or the erasure of
recordings in which they appear. We must answer within **30 days** under GDPR and UK GDPR. A first
request is a medium account ticket and goes to the privacy team. A request that is overdue, a
complaint to a data protection authority or a lawyer's letter is high priority and escalated the
same day.
""",
    ),
    "family-and-team-members": (
        "Sharing access with family or a team",
        """
An owner can invite others under **Home > People**. **Guests** see cameras and get alerts but cannot
change settings or billing; **admins** can do everything except delete the home. Each person signs
in with their own account, so alerts and 2FA stay personal. Plus allows 3 guests, Pro 10.

Business plans add team seats with roles, single sign-on (SAML, Okta and Azure AD) and an audit log.
Every Business account should have at least two admins: if the only admin leaves, recovery needs
written confirmation from the company, which takes time. A Business team that cannot access its
cameras is high priority.
""",
    ),
    "device-offline-troubleshooting": (
        "A device shows offline",
        """
1. Check the device has power: cameras show a blue light when connected, a blinking amber light
   when they cannot reach Wi-Fi.
2. Devices use 2.4 GHz Wi-Fi only; after a router change, set up the device again under
   **Device > Settings > Wi-Fi**.
3. Move the hub or the router closer: more than 15 metres or two walls often causes drop-outs.
4. Restart the hub, then the device. A factory reset is the last step.

One device offline while the others work is a **medium** bug ticket. Every device offline at once
usually means an outage or a router problem: check the status page first. Nightly drop-outs at
the same hour are often a router that reboots itself on a schedule.
""",
    ),
    "app-crashes-and-known-issues": (
        "App crashes and known issues",
        """
Current known issues:

- Android app 4.13.0 crashes when opening a clip on some Samsung phones; fixed in 4.13.2.
- iOS 17: notifications may stop after the update until the app is opened once.
- The Events screen may show timestamps an hour off after a daylight-saving change; a fix is
  planned.

For any crash, update the app, restart the phone and reinstall. Send the app version (**Settings >
About**), the phone model and the steps. A crash that stops one customer using the app is a medium
bug ticket; cosmetic problems (typos, colours, icons, wrong units) are low.
""",
    ),
    "service-status-and-outages": (
        "Service status and outages",
        """
Live status is at status.hearthly.com. An **outage** is when many customers lose the same service at
once: the app or web dashboard not loading, every camera offline, recording stopped, or sign-in
failing for everyone with an error such as 503.

Outage tickets are **high priority bug** tickets even if the status page does not show an incident
yet: the first reports often arrive before monitoring catches it. Agents link the ticket to the
incident, tell the customer that recording resumes automatically and that Pro and Business
customers get a service credit for outages over 4 hours.

A problem with a single device or a single phone is not an outage.
""",
    ),
    "thermostat-safety": (
        "Thermostat safety",
        """
The Hearth Thermostat has a built-in safety limit of 30 °C, but a wiring fault or a stuck relay can
keep a boiler running. If the thermostat will not stop heating, the house is getting hot, the
heating is off in freezing weather, or the unit is hot or smells of burning:

1. Switch the heating system off at the boiler or the breaker.
2. Do not touch exposed wires.
3. Contact support: these tickets are always **high priority**.

A thermostat that ignores its schedule or shows the wrong unit (°F instead of °C) is not a safety
issue: a schedule fault is a medium bug ticket, a display problem a low one.
""",
    ),
    "camera-recording-and-cloud-storage": (
        "Camera recording and cloud storage",
        """
Cameras record clips to the cloud when motion is detected, on Plus, Pro and Business plans. Clips
are kept for the plan's history (30, 60 or 90 days) and can be downloaded one at a time. Free plans
have live view only.

If clips are missing for a time when the camera was online, check the motion zones and sensitivity
first. Missing recordings that are needed for the police or an insurance claim are **high
priority**: support can often recover clips from the last 7 days before they are purged. Blurry
video or buffering usually means the upload speed is below 2 Mbps per camera; it is a medium bug.
""",
    ),
    "notifications-not-arriving": (
        "Notifications not arriving or arriving late",
        """
Check in order: notifications are enabled in the app (**Settings > Notifications**) and in the
phone's settings; battery saver is off for the Hearthly app; quiet hours are not active; the phone
is signed into the same home.

Alerts normally arrive within 5 seconds. Delays of several minutes are usually a phone that puts
apps to sleep (common on Android). Too many false motion alerts: reduce sensitivity or draw motion
zones. Notification problems are medium bug tickets; suggestions such as quiet hours or an
Apple Watch app are feature requests.
""",
    ),
    "feature-requests-and-roadmap": (
        "Feature requests and the roadmap",
        """
We read every idea. Feature requests are logged in the product board and are **low priority**
tickets: the agent thanks the customer, says whether the feature is already planned and links the
public roadmap. We do not promise dates.

Planned this year: Google Home integration, package detection on the doorbell, a dark mode for the
web dashboard and bulk clip export. Not planned: a Linux desktop client, local SD-card recording.

Exception: a Business customer whose contract renewal depends on a feature is a **medium**
feature_request, routed to their account manager. Something that exists but does not work is a bug,
not a feature request.
""",
    ),
    "hub-and-smart-plug-setup": (
        "Setting up the hub and smart plugs",
        """
The Hearth Hub connects sensors, plugs and the light strip over Zigbee and links them to Wi-Fi.
Plug it in near the router, open the app, tap **Add device > Hub** and follow the steps. Up to 50
devices can join one hub.

To pair a smart plug, hold its button for 5 seconds until it blinks, then tap **Add device**. If
pairing fails at step 3, the plug is too far from the hub or the hub firmware is out of date.
Schedules and automations run on the hub, so they keep working when the internet is down.
Set-up questions are low priority; pairing that keeps failing is a medium bug.
""",
    ),
    "firmware-updates": (
        "Firmware updates",
        """
Devices update their firmware automatically between 2 am and 5 am local time; the device restarts
and is offline for up to 5 minutes. The version is under **Device > About**. You can delay updates
for 7 days under **Settings > Updates**, but security updates install anyway.

If a device does not come back after an update, unplug it for 30 seconds. If it still does not
work, support can roll the firmware back remotely. An update that takes every device offline, or a
doorbell a customer relies on for their safety, is a high-priority bug; a single device that
reconnects after a restart is not.
""",
    ),
}
