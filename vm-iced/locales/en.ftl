# vend-vm in English. Every text a screen shows is here (ko.ftl holds the
# same messages in Korean); won amounts arrive formatted ("1,560").

## Money and time
won = { $amount } won
coin = { $value }-won coin
bill = { $value }-won bill
foreign-coin = Foreign coin
never = never

## Header and connection light
exact-change-only = EXACT CHANGE ONLY
out-of-service-pill = OUT OF SERVICE
admin-button = Admin
language-switch = 한국어
link-standalone = Standalone: sales are kept on this machine ({ $events } recorded)
link-online = Online · primary { $primary } · { $unsent } unsent
link-online-no-primary = Online · { $unsent } unsent
link-connecting = Connecting… · { $unsent } unsent · last sync { $synced }
link-unreachable = Offline: no replica answers · { $unsent } unsent · last sync { $synced }
link-unknown-machine = Offline: the replicas do not know this machine · { $unsent } unsent · last sync { $synced }
link-wrong-key = Offline: this machine's key does not match the replicas' · { $unsent } unsent · last sync { $synced }
link-version = Offline: the replicas speak link version { $supported } · { $unsent } unsent · last sync { $synced }

## Customer screen
sort = Sort
sort-slot = Slot
sort-name = Name
sort-price = Price
search = Search products
category-all = All
items-left = { $count } left
sold-out = SOLD OUT
balance = Balance
accepted-money = Accepted
not-accepted-money = Not accepted (try it)
cancel-last = Cancel last purchase
return-change = Return change
keys-hint = Keys: a s d f = 10 50 100 500 · g = 1,000 bill · 1-9 buy · c cancel · x return
out-of-service = Out of service
out-of-service-hint = This machine has nothing to sell. Operator: press Admin, log in, fill the slots and load the coin tubes.

## Customer notices
inserted = { $money } accepted
purchased = Enjoy your { $product }!
cancelled = Cancelled { $product }: { $amount } back in your balance
change-returned = Your change: { $amount } ({ $coins })
bill-returned = Your { $money } is returned
bill-and-change-returned = Your { $money } is returned, with { $amount } in coins ({ $coins })
thank-you = Thank you!
session-timed-out = Session timed out. { $text }
insert-more = Insert { $missing } more to buy { $product }
change-owed-notice = The machine owes you { $amount }: take your ticket to the operator

## Insert rejections
rejected-unknown = Not accepted: use 10, 50, 100 or 500-won coins or 1,000-won bills
rejected-balance-limit = Returned: the balance may not exceed 7,000 won
rejected-bill-limit = Returned: at most 5,000 won in bills
rejected-stacker-full = Returned: the bill stacker is full, please use coins
rejected-out-of-service = Returned: the machine is out of service
rejected-no-change = Returned: exact change only, the machine could not give this back as change

## Change-owed ticket
ticket-title = Change owed
ticket-number = Ticket no. { $ticket }
ticket-amount = Amount owed
ticket-machine = Machine
ticket-time = Time
ticket-claim = Keep this ticket. The operator pays it in full on the next visit, or call the number on the machine with the ticket number.
ticket-ok = OK

## Rule rejections
not-installed = The machine is not installed
already-installed = The machine is already installed
unknown-slot = There is no slot { $slot }
sold-out-product = { $product } is sold out
cannot-make-change = Cannot give { $amount } change: insert the exact amount or press Return
cannot-refund = Cannot cancel: the machine could not give { $amount } back in coins
nothing-to-cancel = There is no purchase to cancel
nothing-to-return = There is no balance to return
customer-session-active = A customer is using the machine: finish the session first
admin-required = Log in as admin first
admin-locked = Admin is locked for { $seconds } more seconds after too many failed logins
wrong-password = The current password is wrong
password-policy = A password needs at least 8 characters with a digit and a special character. This one lacks: { $missing }
rule-min-length = at least 8 characters
rule-max-length = at most 256 bytes
rule-digit = a digit
rule-special = a special character
over-capacity = Slot { $slot } has room for { $room } more
nothing-to-refill = Every slot is already full
nothing-to-load = Every coin tube is already full
not-a-coin = { $money } is not a coin tube
tube-full = The { $money } tube has room for { $room } more
zero-count = The count must be more than zero
bad-count = Counted cash must be between 0 and { $max }
nothing-to-collect = There is nothing to collect
unknown-ticket = There is no open change ticket { $ticket }
stock-above-capacity = Slot { $slot } holds { $stock } items, more than the new capacity
bad-name = A name must have 1 to 40 characters
bad-price = A price must be a multiple of 10 won between 10 and 1,000,000
bad-capacity = A slot holds 1 to 1,000 items
bad-category = A category has 1 to 4 levels of valid names
bad-slot = Slot numbers start at 1 and a machine has at most 64 slots
bad-code = A product code has 1 to 16 characters: capital letters A-Z, digits and '-'
not-recorded = Not recorded: { $problem }
other-problem = { $problem }

## Login
login-title = Operator login
password-placeholder = Admin password
log-in = Log in
back = Back
failed-attempts = { $count ->
    [0] 5 failed attempts lock the admin screen for 5 minutes
    [one] 1 failed attempt since the last login (5 lock the admin screen for 5 minutes)
   *[other] { $count } failed attempts since the last login (5 lock the admin screen for 5 minutes)
}
locked-until = Locked after too many failed logins: try again in { $seconds } s
login-welcome = Welcome, operator
login-wrong = { $left ->
    [one] Wrong password. 1 attempt left before a 5-minute lock.
   *[other] Wrong password. { $left } attempts left before a 5-minute lock.
}
login-locked = Wrong password. Admin is locked for 5 minutes.
logged-out = Logged out

## Admin tabs
tab-stock = Stock
tab-cash = Coins & cash
tab-products = Products
tab-reports = Reports
tab-password = Password
log-out = Log out

## Stock
refill-title = Refill slots
fill-slot = Fill slot { $slot }
fill-all-slots = Fill all slots
refilled = Slot { $slot } +{ $added }

## Coins and cash
tubes-title = Coin tubes
tube-name = { $value }-won tube
fill-tube = Fill { $value } tube
load-all-tubes = Load all tubes
tube-loaded = { $count } × { $money } loaded
collection-title = Cash collection
collection-expected = Cash box { $cash_box } + bill stacker { $stacker } = { $expected } expected
counted-placeholder = Counted amount (won)
record-collection = Record collection
enter-counted = Enter the counted cash in won, e.g. 15000
confirm-difference = Counted { $counted }, expected { $expected }: { $difference }. Count again, or record it as it is?
record-anyway = Record { $counted }
count-again = Count again
collected-exact = Collected { $counted }, as expected
collected-over = Collected { $counted }: { $amount } over
collected-short = Collected { $counted }: { $amount } short
over = { $amount } over
short = { $amount } short
history-title = Collection history
history-time = Time
history-expected = Expected
history-counted = Counted
history-difference = Over/short
history-empty = No collection yet
owed-title = Change owed to customers: { $amount }
owed-ticket = Ticket no. { $ticket }: { $amount } ({ $time })
settle = Settle no. { $ticket }
settled = Ticket no. { $ticket } settled ({ $amount })

## Products
names-title = Names and prices
name-placeholder = Name
price-placeholder = Price
save-slot = Save slot { $slot }
price-changed = Slot { $slot } now costs { $price }
price-changed-remote = Slot { $slot } now costs { $price } (from the dashboard)
renamed = Slot { $slot } is now { $name }
renamed-remote = Slot { $slot } is now { $name } (from the dashboard)
enter-price = Enter the price in won, a multiple of 10
nothing-changed = Slot { $slot }: nothing changed
configure-title = Add or reconfigure a slot
slot-placeholder = Slot
product-placeholder = Product name
code-placeholder = Code (COFFEE)
category-placeholder = Category (Drinks > Tea)
capacity-placeholder = Capacity
configure-slot = Configure slot
configured = Slot { $slot } configured: { $name }
numbers-needed = Slot, price and capacity must be numbers
categories-title = Categories

## Reports
daily = Daily
monthly = Monthly
report-period = Period
report-product = Product
report-count = Sold
report-sales = Sales
report-total = Total
report-empty = No sales in this period
cash-summary = Cash
cash-collected = Collected
cash-over-short = Over/short
cash-owed = Change owed

## Password
password-title = Change the admin password
current-password = Current password
new-password = New password
password-rules = At least 8 characters, with a digit and a special character.
change-password = Change password
password-changed = Password changed
remote-refused = Remote command { $id } refused: { $reason }
