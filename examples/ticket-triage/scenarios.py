"""Situations a Hearthly support ticket can describe, each with its true category and priority.

Hearthly is a made-up company: smart-home hardware (cameras, doorbell, thermostat, plugs, hub)
sold through its own online store, plus app subscriptions (Free, Plus, Pro, Business). Every
situation has several independent phrasings of its core ("core"), optional supporting sentences
("details") and e-mail subject lines ("subjects"). ``generate.py`` composes tickets from these
and from the tone, opener, closing and signature fragments, so no class is one template.

The labels follow the help-centre articles in ``articles.py`` (the RAG rung reads them): e.g.
money back for a *store order* is ``refund``, but money back for a *subscription* is ``billing``;
a parcel damaged in transit is ``shipping`` unless the customer asks for their money back.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Scenario:
    key: str
    category: str
    priority: str
    core: list[str]
    details: list[str] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)
    # kind of ticket that may be escalated by a legal threat or a repeated contact (medium -> high)
    escalable: bool = False


S = Scenario

SCENARIOS: list[Scenario] = [
    # ------------------------------------------------------------------ billing
    S(
        "double_charge",
        "billing",
        "high",
        [
            "I was charged twice for my {plan} subscription this month, {amount} two times on "
            "the same day.",
            "My card shows two identical charges of {amount} from Hearthly on {date}. I only "
            "have one account.",
            "you billed me double for {plan}. two payments of {amount}, please reverse one",
            "Looking at my bank statement I see {amount} taken twice for the same {plan} renewal.",
            "There are duplicate charges on my credit card (ending {last4}) for the {plan} plan.",
        ],
        [
            "Both are posted, not pending.",
            "My bank says both transactions went through.",
            "This pushed my account into overdraft.",
            "I've attached a screenshot of the statement.",
        ],
        [
            "Charged twice!!",
            "Duplicate charge",
            "double billing",
            "Two charges for one subscription",
        ],
    ),
    S(
        "unauthorised_charge",
        "billing",
        "high",
        [
            "There's a charge of {amount} from Hearthly on my card that I never authorised. I "
            "don't even have a {plan} plan.",
            "Someone upgraded my account to {plan} and I was charged {amount}. It wasn't me.",
            "I see a Hearthly charge for {amount} on {date} and I cancelled my account last "
            "year. I did not agree to this.",
            "Unknown charge from HEARTHLY*SUBSCR for {amount}. I don't recognise it at all.",
        ],
        [
            "If this isn't sorted I'll have to dispute it with my bank.",
            "My card ends in {last4}.",
            "Please tell me how this happened.",
        ],
        ["Charge I didn't make", "Unauthorized charge", "What is this charge??"],
    ),
    S(
        "charged_after_cancel",
        "billing",
        "high",
        [
            "I cancelled my {plan} subscription on {date} and you still took {amount} today.",
            "Cancelled weeks ago, got a confirmation email, and was charged {amount} again anyway.",
            "why am i still being charged?? i cancelled {plan} in the app last month",
            "You charged my card {amount} for another year of {plan} even though I turned off "
            "auto-renew.",
        ],
        [
            "I have the cancellation confirmation email.",
            "I want this money back.",
            "This is the second month it has happened.",
        ],
        ["Charged after cancelling", "still being billed", "Cancelled but charged"],
    ),
    S(
        "business_suspended",
        "billing",
        "high",
        [
            "Our Business account was suspended for a failed payment and now none of our {n} "
            "sites can see their cameras.",
            "The card on our Business plan expired, the account got locked and the staff at "
            "{biz} can't view any footage.",
            "Payment failed on our company account and you shut off recording for all our "
            "locations. We already updated the card.",
        ],
        [
            "We're a {biz_kind} and we need the cameras for insurance.",
            "The new card is already on file.",
            "Please reactivate it today.",
        ],
        [
            "Account suspended - business",
            "Recording stopped for all sites",
            "URGENT business account locked",
        ],
    ),
    S(
        "payment_failed",
        "billing",
        "medium",
        [
            "My payment for {plan} keeps failing even though the card is valid.",
            "I got an email saying my payment of {amount} failed. I've tried two different cards.",
            "card declined when renewing my subscription, not sure why, the bank says it's fine",
            "I can't update my payment method, the form just says "
            "'payment could not be processed'.",
            "The app keeps asking me to fix my billing info but my card ending {last4} works "
            "everywhere else.",
        ],
        [
            "I don't want to lose my video history.",
            "Does the grace period still apply?",
            "I tried Safari and Chrome.",
        ],
        ["Payment failed", "card declined", "Can't update card"],
    ),
    S(
        "wrong_amount",
        "billing",
        "medium",
        [
            "I was charged {amount} for {plan} but the price on your website is lower.",
            "My invoice this month is higher than usual and I didn't change anything.",
            "The price went up without any notice? I was billed {amount} for {plan}.",
            "You charged me sales tax, but I'm in {region} and I added my VAT number.",
            "I returned the camera weeks ago but you're still charging me for the Plus "
            "subscription.",
        ],
        [
            "Can you explain the difference?",
            "I'd like the overcharge credited.",
            "Last month it was the normal price.",
        ],
        ["Wrong amount charged", "Invoice higher than expected", "price increase?"],
    ),
    S(
        "plan_change",
        "billing",
        "medium",
        [
            "I upgraded to {plan} yesterday and paid, but the app still shows the Free plan.",
            "I downgraded from Pro to Plus but I'm still being charged the Pro price.",
            "Switched to annual billing and got charged for both monthly and annual.",
            "paid for {plan} but my cameras still only keep 24h of video",
        ],
        [
            "I've logged out and back in.",
            "The receipt number is {invoice}.",
        ],
        ["Upgrade not applied", "Plan change problem", "Still on old plan"],
        True,
    ),
    S(
        "sub_refund",
        "billing",
        "medium",
        [
            "I forgot to cancel my trial and got charged {amount} for {plan}. Can I get that "
            "back? I haven't used it.",
            "I cancelled {plan} today, a day after it renewed. Could you refund this month?",
            "Accidentally bought the yearly Pro plan instead of monthly. Can you refund it and "
            "switch me?",
        ],
        [
            "I haven't used any of the paid features.",
            "I'm happy to stay on Free.",
        ],
        ["Subscription refund", "Charged for trial", "wrong plan purchased"],
        True,
    ),
    S(
        "promo_code",
        "billing",
        "low",
        [
            "The promo code {promo} isn't working at checkout for the {plan} plan.",
            "I had a discount code from your newsletter but it says expired. Is there a new one?",
            "Does the student discount apply to the Pro plan?",
        ],
        ["No rush.", "Just wondering."],
        ["promo code", "discount question"],
    ),
    S(
        "invoice_copy",
        "billing",
        "low",
        [
            "Could you send me a copy of my invoices for the last year? I need them for my "
            "accountant.",
            "The invoice shows my old address. Can you update it? I'm not in a hurry.",
            "Where can I download invoices for our Business plan?",
            "Can I get an invoice with my company name and VAT number on it?",
            "need receipts for {year}, for taxes",
        ],
        ["The company name is {biz}.", "PDF is fine."],
        ["Invoice request", "Receipts", "VAT invoice"],
    ),
    S(
        "pricing_question",
        "billing",
        "low",
        [
            "What's the difference in price between Plus and Pro if I pay yearly?",
            "If I upgrade mid-month, how does the billing work?",
            "When does my subscription renew? I can't find the date anywhere.",
            "Do I need a subscription at all to use the thermostat?",
            "Is there a discount for paying annually for the {plan} plan?",
            "Is VAT included in the prices on the website?",
            "what happens to my recordings if I go back to the free plan?",
            "How many cameras can I have on Plus?",
        ],
        ["Thinking about upgrading.", "We have {n} cameras."],
        ["Question about pricing", "Plans", "billing question"],
    ),
    S(
        "change_payment",
        "billing",
        "low",
        [
            "How do I switch my payment method from card to PayPal?",
            "I got a new card, how do I update it before the renewal?",
            "Can I pay for the Business plan by bank transfer instead of card?",
            "Can my husband's card pay for my subscription?",
        ],
        [],
        ["Payment method", "updating card"],
    ),
    # ------------------------------------------------------------------ account
    S(
        "hacked",
        "account",
        "high",
        [
            "I think my account has been hacked. I got a login alert from {city} and my password "
            "no longer works.",
            "Someone changed the email on my Hearthly account and I'm locked out. They can see "
            "my cameras.",
            "There's a device I don't recognise logged into my account and someone has been "
            "watching my {room} camera.",
            "My account password was changed and I didn't do it. Please lock the account now.",
            "got an email that my 2FA was turned off. that wasn't me!!",
        ],
        [
            "My kids' room has a camera in it, this is really scary.",
            "I already changed my email password.",
            "The login alert said {os} in {city}.",
        ],
        ["Account hacked", "Someone is in my account", "Security issue", "unauthorized access"],
    ),
    S(
        "locked_out_business",
        "account",
        "high",
        [
            "Our admin account is locked after too many attempts and no one at {biz} can manage "
            "the cameras.",
            "The only admin on our Business account left the company and we can't get in. We "
            "need access to footage for the police.",
            "All our staff logins stopped working after the SSO change and we can't view any of "
            "the store cameras.",
        ],
        ["We have {n} locations.", "The police need the footage by tomorrow."],
        ["Locked out - business", "Admin access"],
    ),
    S(
        "lost_2fa",
        "account",
        "medium",
        [
            "I got a new phone and lost my authenticator app, so I can't pass 2FA. How do I "
            "reset it?",
            "I don't have my recovery codes and the 2FA codes aren't accepted anymore.",
            "lost my phone, now i can't log in because of two factor. help",
            "My authenticator shows codes but the app says 'invalid code' every time.",
            "The SMS with the verification code never arrives so I can't sign in.",
        ],
        [
            "I can verify my identity with the order number {order}.",
            "I still know my password.",
            "The old phone was wiped.",
        ],
        ["2FA reset", "Can't log in - two factor", "Lost authenticator"],
        True,
    ),
    S(
        "reset_email_missing",
        "account",
        "medium",
        [
            "The password reset email never arrives. I've checked spam.",
            "I requested a password reset 4 times and nothing shows up in my inbox.",
            "Forgot my password and the reset link says it has expired as soon as I click it.",
            "can't login, reset link doesn't work",
        ],
        [
            "My login email is {email}.",
            "I'm using {os}.",
        ],
        ["Password reset not working", "No reset email", "cant log in"],
        True,
    ),
    S(
        "account_locked",
        "account",
        "medium",
        [
            "My account says 'temporarily locked' after I typed the wrong password a few times. "
            "It's been a day.",
            "I'm locked out of the app after too many login attempts, how long does this last?",
        ],
        ["I know the right password now."],
        ["Account locked"],
        True,
    ),
    S(
        "change_email_fail",
        "account",
        "medium",
        [
            "I'm trying to change my account email to {email} but the verification link gives an "
            "error.",
            "I can't change my email because I no longer have access to the old one.",
        ],
        ["My old address was with a company I left."],
        ["Change email", "Update login email"],
    ),
    S(
        "data_deletion",
        "account",
        "medium",
        [
            "Please delete my account and all my recorded video.",
            "I'd like a copy of all the data you hold about me (GDPR access request).",
            "How do I permanently delete my account? I sold the house and the devices.",
        ],
        ["My account email is {email}.", "I'm based in {region}."],
        ["Delete my account", "Data request", "GDPR"],
    ),
    S(
        "data_deletion_legal",
        "account",
        "high",
        [
            "I asked you to delete my data {days} days ago under GDPR and nobody replied. I will "
            "report this to the data protection authority.",
            "Second request: erase all footage of me recorded by my ex-partner's Hearthly "
            "account. My lawyer is in copy.",
            "You have not answered my subject access request within the legal deadline. Please "
            "respond immediately.",
        ],
        [],
        ["Formal GDPR complaint", "Legal: data erasure", "Subject access request - overdue"],
    ),
    S(
        "profile_question",
        "account",
        "low",
        [
            "How do I change my display name in the app?",
            "Can I add my partner to my account so she gets alerts too?",
            "How do I turn on two-factor authentication?",
            "Is it possible to have two homes under one account?",
            "where do i change the profile picture",
            "Can I change the language of the app to {language}?",
            "What's the difference between an owner and a guest on the account?",
            "Can I get login alerts by e-mail?",
            "How do I log out of the app on an old phone I gave away? Not urgent, it's been reset.",
            "is there a way to rename my home in the account? it still says 'My Home 1'",
            "Can I use the same account on my tablet and my phone at once?",
            "How do I switch from SMS codes to an authenticator app for two-factor?",
        ],
        ["Thanks!", "Couldn't find it in the help centre."],
        ["Quick question", "Account settings", "profile"],
    ),
    # ------------------------------------------------------------------ bug
    S(
        "outage",
        "bug",
        "high",
        [
            "None of my cameras are loading, the app just says 'service unavailable'. Is "
            "Hearthly down?",
            "The whole app is down for us, every device shows offline and the web dashboard "
            "gives {code}.",
            "Nothing is recording since {time}. All {n} cameras show 'no connection' but the "
            "internet is fine.",
            "the website and the app both won't load, is there an outage??",
            "Our Business dashboard has been down for two hours and we can't monitor any location.",
            "Nobody in our family can log in, the login page shows {code} for all of us.",
        ],
        [
            "Your status page says everything is operational.",
            "Neighbours with Hearthly have the same problem.",
            "I've restarted the router and the hub.",
            "We rely on this for security at night.",
        ],
        ["Outage?", "Everything offline", "Service down", "Is Hearthly down?"],
    ),
    S(
        "thermostat_safety",
        "bug",
        "high",
        [
            "My Hearth Thermostat won't stop heating, it's at {temp} degrees and climbing and "
            "the app won't change it.",
            "The thermostat is stuck on heat and the house is getting dangerously hot. My baby "
            "is asleep upstairs.",
            "The heating turned off overnight and won't come back on. It's freezing and I have "
            "an elderly mother here.",
            "The thermostat screen is hot to the touch and there's a burning smell.",
        ],
        [
            "I had to turn the boiler off at the switch.",
            "It's {temp_out} outside.",
            "Firmware is {version}.",
        ],
        ["Thermostat stuck - urgent", "Heating won't turn off", "burning smell from thermostat"],
    ),
    S(
        "data_loss",
        "bug",
        "high",
        [
            "All my recorded clips from the last month have disappeared from the app. I need "
            "them for an insurance claim.",
            "Video history is gone. I pay for Pro, and the footage of the break-in on {date} is "
            "missing.",
            "Someone broke into my garage on {date} and the recording for that night is blank, "
            "even though the camera was online.",
        ],
        ["The police asked for the video.", "I'm on the {plan} plan."],
        ["Recordings missing", "Lost footage", "Break-in footage gone"],
    ),
    S(
        "doorbell_dead",
        "bug",
        "high",
        [
            "The doorbell stopped working after the firmware update and now no one can see who's "
            "at the door. I live alone and use it for safety.",
            "Every camera in our shop went offline after last night's update. We're open in an "
            "hour.",
        ],
        ["Factory reset didn't help."],
        ["Update broke everything"],
    ),
    S(
        "device_offline",
        "bug",
        "medium",
        [
            "My {device} keeps going offline every few hours. Wi-Fi is strong in that room.",
            "The {device} in the {room} shows 'offline' but it's plugged in and the light is blue.",
            "one of my cams wont connect anymore after I changed router",
            "The {device} disconnects every night around 2am and comes back in the morning.",
            "I can't get the {device} to pair with the hub, it fails at step 3.",
        ],
        [
            "The other devices are fine.",
            "I've tried a factory reset.",
            "I've restarted the hub twice.",
            "It's about {meters} metres from the router.",
        ],
        ["Camera offline", "Device keeps disconnecting", "Pairing problem"],
        True,
    ),
    S(
        "app_crash",
        "bug",
        "medium",
        [
            "The app crashes every time I open the {screen} screen on my {os}.",
            "Since version {version} the Android app closes as soon as I tap a camera.",
            "The app freezes on the loading screen, I have to force close it.",
            "app keeps crashing when i try to watch a clip",
        ],
        [
            "I've reinstalled it.",
            "It worked fine last week.",
            "The web dashboard works.",
        ],
        ["App crashing", "Crash on {os}", "app freezes"],
        True,
    ),
    S(
        "notifications",
        "bug",
        "medium",
        [
            "Motion notifications arrive 5-10 minutes late, which makes them useless.",
            "I'm not getting any doorbell notifications anymore, even though they're enabled.",
            "I get motion alerts for the {room} camera even when nothing is there, dozens a day.",
            "Notifications stopped on my {os} after the last update.",
        ],
        ["Notifications are allowed in the phone settings.", "It started around {date}."],
        ["Notifications not working", "Late alerts"],
        True,
    ),
    S(
        "automation",
        "bug",
        "medium",
        [
            "My smart plug schedules don't run anymore, the lights stayed on all night.",
            "The thermostat ignores the schedule and goes back to {temp} degrees.",
            "Away mode doesn't turn on when we leave, geofencing seems broken.",
            "The light strip changes to the wrong colour when the automation runs.",
        ],
        ["I've recreated the schedule.", "Time zone is set correctly."],
        ["Schedule broken", "Automation not running"],
        True,
    ),
    S(
        "video_quality",
        "bug",
        "medium",
        [
            "Live view on the {device} is very blurry and keeps buffering.",
            "Night vision on my outdoor camera shows a white haze, you can't see anything.",
            "Two-way talk on the doorbell has a loud echo and the visitor can't hear me.",
        ],
        ["Upload speed is {mbps} Mbps."],
        ["Blurry video", "Night vision problem"],
    ),
    S(
        "cosmetic",
        "bug",
        "low",
        [
            "Small thing: the {screen} screen has a typo, it says 'Notifcations'.",
            "In dark mode some of the text in the settings is black on dark grey and hard to read.",
            "The battery icon shows 0% for my doorbell but it's wired, so no battery.",
            "The temperature on the thermostat is shown in Fahrenheit on the widget even though "
            "I chose Celsius.",
            "The clip timestamps are an hour off since the clocks changed.",
            "The app icon looks blurry on my home screen since the update.",
            "The 'last seen' time for the hub says '-1 minutes ago', ha.",
            "The Devices list sorts my cameras in a weird order every time I open it.",
            "In the {language} version of the app some buttons are still in English.",
            "The onboarding video in the app doesn't have sound. Not blocking anything.",
        ],
        ["Not a big deal, just letting you know.", "Everything else works fine."],
        ["Minor bug", "Small display issue", "typo in app"],
    ),
    # ------------------------------------------------------------------ feature_request
    S(
        "feature_idea",
        "feature_request",
        "low",
        [
            "It would be great if the app had {feature}.",
            "Please add {feature}!",
            "Any plans to support {feature}? Would really use it.",
            "Feature request: {feature}.",
            "I love the cameras but I really miss {feature}. Competitors have it.",
            "Not sure if this is a bug or just not possible, but I can't find {feature}. Please "
            "add it if it doesn't exist.",
            "Suggestion: {feature}. That would make the app so much better.",
            "is {feature} on the roadmap?",
            "Would you consider {feature}? My whole family would use it.",
        ],
        [
            "Thanks for a great product.",
            "I'd even pay a bit more for it.",
            "My neighbours asked about it too.",
            "Happy to beta test.",
        ],
        ["Feature request", "Suggestion", "Idea for the app", "Would love this feature"],
    ),
    S(
        "feature_business",
        "feature_request",
        "medium",
        [
            "We're on the Business plan and need {feature} before our contract renews next "
            "month, otherwise we'll have to switch providers.",
            "Our renewal decision depends on {feature}. Is it coming this quarter? We have {n} "
            "sites.",
            "Before we sign for another year, we need to know if {feature} will ship. It's a "
            "requirement from our IT team.",
            "{biz} here: our procurement team will only renew the Business plan if you add "
            "{feature}. Can you give us a date?",
            "Business customer with {n} sites. Without {feature} we can't roll Hearthly out to "
            "the rest of the company.",
        ],
        ["Our account manager said to write here.", "Our company is {biz}."],
        ["Business feature request", "Renewal - feature needed"],
    ),
    # ------------------------------------------------------------------ shipping
    S(
        "lost_parcel",
        "shipping",
        "medium",
        [
            "My order {order} was supposed to arrive {days} days ago and tracking hasn't updated "
            "since.",
            "Tracking says delivered but there's no package anywhere. Order {order}.",
            "Where is my order? It's been {days} business days.",
            "{carrier} says the parcel was returned to sender, I never got a delivery attempt.",
            "my package is stuck in customs for over a week",
        ],
        [
            "I checked with the neighbours.",
            "It was a gift for {occasion}.",
            "I ordered a {product}.",
        ],
        ["Where is my order?", "Package not received", "Order {order}", "tracking not updating"],
        True,
    ),
    S(
        "damaged_parcel",
        "shipping",
        "medium",
        [
            "The box arrived crushed and the {product} inside is cracked. Can you send a "
            "replacement?",
            "My {product} arrived with a broken mount, looks like it was dropped in transit. I'd "
            "like a new one.",
            "The parcel was wet and torn when {carrier} delivered it and the {product} won't "
            "turn on. Please replace it.",
        ],
        ["I took photos of the box.", "Order {order}."],
        ["Damaged in delivery", "Arrived broken"],
        True,
    ),
    S(
        "wrong_item",
        "shipping",
        "medium",
        [
            "I ordered a {product} but received a {product2}.",
            "My order {order} was missing the mounting kit and the power adapter.",
            "You sent me 2 smart plugs instead of the 4-pack I paid for.",
        ],
        ["Order {order}.", "The packing slip says the right thing."],
        ["Wrong item", "Missing items in order"],
        True,
    ),
    S(
        "change_address",
        "shipping",
        "medium",
        [
            "I put the wrong address on order {order}, can you change it before it ships?",
            "I'm moving next week, can you redirect order {order} to my new address in {city}?",
            "Can I change the delivery address? Order {order} hasn't shipped yet.",
        ],
        ["The new address is {street}."],
        ["Change delivery address", "Wrong address on order"],
    ),
    S(
        "shipping_legal_sensitive",
        "shipping",
        "high",
        [
            "I received someone else's order with their name, address and phone number on the "
            "invoice. This is a privacy problem.",
            "A parcel was delivered to me with another customer's name and home address, and a "
            "camera already linked to their account.",
            "Your courier reversed into my car while delivering order {order} and drove off. I "
            "want this handled by someone senior.",
            "Order {order} contained a used camera with someone's SD card still inside, full of "
            "their videos.",
        ],
        ["I don't want to keep their details."],
        ["Received someone else's order", "Privacy issue with delivery"],
    ),
    S(
        "shipping_time_question",
        "shipping",
        "low",
        [
            "How long does shipping to {region} usually take?",
            "Do you ship to {country}?",
            "If I order today, will it arrive before {occasion}?",
            "Is express shipping available?",
            "Can I pick up an order instead of having it shipped?",
            "what carrier do you use for {region}?",
            "Do I have to pay customs duties when ordering to {country}?",
        ],
        ["Thanks!", "Planning to order a {product}."],
        ["Shipping question", "Delivery times", "Do you ship to {country}?"],
    ),
    S(
        "tracking_question",
        "shipping",
        "low",
        [
            "Where can I find the tracking number for my order?",
            "I didn't get a shipping confirmation email, has order {order} shipped?",
            "The tracking link in the email doesn't open, is there another way to check?",
            "Can I see all my past orders and their tracking somewhere in my account?",
            "how do I know which courier is bringing my {product}?",
        ],
        [],
        ["Tracking number", "Shipping confirmation"],
    ),
    # ------------------------------------------------------------------ refund
    S(
        "return_request",
        "refund",
        "medium",
        [
            "I'd like to return the {product} I bought {days} days ago, it doesn't fit my door "
            "frame.",
            "How do I return order {order}? The {product} isn't compatible with my heating system.",
            "I want to send back the {product} and get my money back, it's unopened.",
            "please start a return for my {product}, changed my mind",
        ],
        ["Order {order}.", "It's still in the original box."],
        ["Return request", "Return {product}", "send back"],
        True,
    ),
    S(
        "refund_status",
        "refund",
        "medium",
        [
            "I returned my {product} {days} days ago and still haven't received the refund.",
            "The return was delivered to your warehouse on {date} but my refund of {hw_amount} "
            "hasn't come through.",
            "where's my refund? sent the item back weeks ago",
            "You refunded {hw_amount} but the order total was higher. Where's the rest?",
        ],
        ["The return tracking shows delivered.", "Order {order}."],
        ["Refund not received", "Refund status", "partial refund?"],
        True,
    ),
    S(
        "cancel_order",
        "refund",
        "medium",
        [
            "Please cancel order {order} and refund me, I ordered by mistake.",
            "I need to cancel my order, I found the {product} cheaper locally.",
            "cancel my order pls, it hasn't shipped yet",
        ],
        ["It was placed {date}."],
        ["Cancel order", "Order cancellation"],
    ),
    S(
        "defective_refund",
        "refund",
        "medium",
        [
            "The {product} arrived damaged and I just want my money back, not a replacement.",
            "My {product} stopped working after a week. "
            "I don't want another one, please refund me.",
        ],
        ["Order {order}.", "I've already bought a different brand."],
        ["Refund for broken item", "money back"],
        True,
    ),
    S(
        "refund_safety",
        "refund",
        "high",
        [
            "The battery in my {product} swelled up and cracked the case. I want a full refund, "
            "this is a fire hazard.",
            "The power adapter that came with my {product} melted and scorched the outlet. I "
            "want a refund and an explanation.",
            "The {product} sparked when I plugged it in. I am returning it and I want my money "
            "back today, not store credit.",
        ],
        ["I have photos.", "I unplugged everything."],
        ["Safety issue - refund", "Melted adapter"],
    ),
    S(
        "return_policy_question",
        "refund",
        "low",
        [
            "What is your return policy for opened items?",
            "How long do I have to return a {product}?",
            "If I return a gift, does the refund go to me or to the person who bought it?",
            "Do I have to pay for return shipping?",
            "Can I return just one camera from a 2-pack?",
            "Is the 30 day return window counted from the order date or the delivery date?",
            "Do you refund the original shipping cost if I return something?",
            "can i exchange a white doorbell for a black one?",
            "If I bought a {product} on sale and the price drops further, do you refund the "
            "difference?",
        ],
        ["Just checking before I order.", "It was a gift."],
        ["Return policy question", "Returns"],
    ),
]


# -------------------------------------------------------------------------------- slot fillers
PRODUCTS = [
    "Hearth Cam Outdoor",
    "Hearth Cam Indoor",
    "Hearth Doorbell",
    "Hearth Thermostat",
    "Smart Plug 4-pack",
    "Hearth Hub",
    "Sensor Kit",
    "Light Strip",
    "outdoor camera",
    "video doorbell",
    "thermostat",
    "indoor cam",
    "smart plug",
    "solar panel for the cam",
    "chime",
    "Cam Outdoor 2-pack",
]
DEVICES = [
    "Hearth Cam Outdoor",
    "indoor cam",
    "doorbell",
    "Hearth Hub",
    "thermostat",
    "garage camera",
    "back yard cam",
    "smart plug",
    "Cam Indoor",
    "front door camera",
]
FEATURES = [
    "a dark mode for the web dashboard",
    "HomeKit support",
    "Google Home integration",
    "a way to export clips in bulk",
    "person detection that ignores pets",
    "a widget for the lock screen",
    "an Apple Watch app",
    "package detection on the doorbell",
    "scheduled privacy mode for indoor cameras",
    "a family sharing option with separate logins",
    "support for 5 GHz Wi-Fi",
    "local recording to an SD card",
    "a Linux desktop client",
    "energy reports for the smart plugs",
    "a vacation mode for the thermostat",
    "custom motion zones with more than 3 areas",
    "two-factor via hardware security keys",
    "an API for home automation",
    "support for {language} in the app",
    "multi-camera view on tablets",
    "a timeline view that shows all cameras together",
    "sunrise/sunset schedules for plugs",
    "an option to turn off the doorbell light",
    "quiet hours for notifications",
    "audit logs for Business admins",
    "SSO with Okta for Business accounts",
    "CSV export of thermostat history",
    "Alexa announcements for the doorbell",
]
PLANS = ["Plus", "Pro", "Business", "Plus", "Pro"]
AMOUNTS = [
    "$4.99",
    "$9.99",
    "$29.00",
    "$49.90",
    "$99.99",
    "€9.99",
    "£4.99",
    "$59.88",
    "€4.99",
    "$119.88",
    "£99.00",
    "$7.99",
]
HW_AMOUNTS = [
    "$129.00",
    "$59.99",
    "$89.95",
    "$249.00",
    "$34.99",
    "$139.00",
    "$119.00",
    "$199.98",
    "$64.50",
]
DATES = [
    "March 3",
    "the 14th",
    "last Tuesday",
    "Monday",
    "12 May",
    "June 2nd",
    "3/12",
    "Friday",
    "the 1st",
    "Oct 8",
    "yesterday",
    "Sunday night",
    "2 weeks ago",
    "Jan 27",
    "the 22nd",
]
CARRIERS = [
    "UPS",
    "FedEx",
    "USPS",
    "DHL",
    "Royal Mail",
    "Canada Post",
    "DPD",
    "Australia Post",
    "the courier",
]
REGIONS = [
    "Canada",
    "the UK",
    "the EU",
    "Australia",
    "Germany",
    "France",
    "Ireland",
    "the Netherlands",
    "Spain",
    "New Zealand",
]
COUNTRIES = [
    "Norway",
    "Switzerland",
    "Mexico",
    "Japan",
    "Iceland",
    "Poland",
    "Portugal",
    "Italy",
    "Brazil",
    "South Africa",
    "Israel",
]
CITIES = [
    "Lagos",
    "Denver",
    "Manchester",
    "Toronto",
    "Lyon",
    "Austin",
    "Kraków",
    "Melbourne",
    "Dublin",
    "Seattle",
    "Leeds",
    "Porto",
]
OSES = [
    "iPhone 13",
    "Pixel 7",
    "Galaxy S22",
    "iPad",
    "Android 14",
    "iOS 17",
    "iPhone 15 Pro",
    "OnePlus 11",
    "Moto G",
]
VERSIONS = ["4.12.1", "4.13.0", "4.13.2", "5.0.1", "4.11.8"]
CODES = [
    "error 503",
    "E-104",
    "ERR_SYNC_TIMEOUT",
    "code 0x2F",
    "error 500",
    "'Something went wrong (E-221)'",
]
ROOMS = [
    "living room",
    "garage",
    "nursery",
    "front porch",
    "office",
    "kitchen",
    "hallway",
    "back yard",
    "basement",
    "stockroom",
]
SCREENS = ["Events", "Settings", "Live view", "History", "Devices", "Schedules"]
LANGUAGES = ["Polish", "Portuguese", "Turkish", "Korean", "Dutch", "Hindi", "Greek"]
OCCASIONS = ["Christmas", "my dad's birthday", "the weekend", "our move", "Mother's Day", "Friday"]
BIZ = [
    "Sunny Dental",
    "Corner Bakery",
    "Blue Fin Sushi",
    "Oakridge Storage",
    "Kettle & Co",
    "Maple Vet Clinic",
    "Northside Gym",
    "Harbor Books",
    "Pixel Print Shop",
    "Green Leaf Pharmacy",
    "Riverside Motel",
]
BIZ_KINDS = [
    "small pharmacy",
    "storage company",
    "chain of 3 cafés",
    "vet clinic",
    "motel",
    "dental practice",
]
STREETS = [
    "14 Elm Street",
    "221 Harbour Road",
    "7 Rue des Lilas",
    "55 King St W, apt 3",
    "9 Birch Close",
]
PROMOS = ["SPRING20", "WELCOME10", "HEARTH15", "BFRIDAY30", "SAVE5NOW"]
FIRST_NAMES = [
    "Maria",
    "James",
    "Aisha",
    "Chen",
    "Olga",
    "Tom",
    "Priya",
    "Kwame",
    "Lucía",
    "Ben",
    "Fatima",
    "Sven",
    "Noura",
    "Dave",
    "Hiroshi",
    "Emma",
    "Carlos",
    "Zoe",
    "Rajesh",
    "Ingrid",
    "Mohammed",
    "Claire",
    "Tyrone",
    "Yuki",
    "Pierre",
    "Grace",
    "Ahmed",
    "Linda",
    "Mateo",
    "Sophie",
    "Kofi",
    "Anna",
    "Raj",
    "Beth",
    "Oskar",
    "Leila",
    "Frank",
    "Mei",
    "Nadia",
    "Greg",
]
LAST_NAMES = [
    "Gonzalez",
    "Okafor",
    "Smith",
    "Kowalski",
    "Nguyen",
    "Patel",
    "Müller",
    "O'Brien",
    "Haddad",
    "Johansson",
    "Tanaka",
    "Mensah",
    "Rossi",
    "Dubois",
    "Kim",
    "Silva",
    "Brown",
    "Novak",
    "Ali",
    "Fischer",
    "Walsh",
    "Lee",
]
