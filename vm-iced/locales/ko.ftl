# vend-vm 한국어 (기본 언어). 화면에 나오는 모든 글이 여기 있다 (en.ftl에
# 같은 메시지의 영어판). 금액은 서식이 적용된 채로 온다 ("1,560").

## 돈과 시간
won = { $amount }원
coin = { $value }원 동전
bill = { $value }원 지폐
foreign-coin = 외국 동전
never = 없음

## 머리글과 연결 표시
exact-change-only = 정확한 금액만
out-of-service-pill = 판매 중지
admin-button = 관리자
language-switch = English
link-standalone = 단독 운영: 판매 기록은 이 기계에 보관됩니다 ({ $events }건 기록)
link-online = 온라인 · 주 서버 { $primary } · 미전송 { $unsent }건
link-online-no-primary = 온라인 · 미전송 { $unsent }건
link-connecting = 연결 중… · 미전송 { $unsent }건 · 마지막 동기화 { $synced }
link-unreachable = 오프라인: 응답하는 서버가 없습니다 · 미전송 { $unsent }건 · 마지막 동기화 { $synced }
link-unknown-machine = 오프라인: 서버가 이 기계를 모릅니다 · 미전송 { $unsent }건 · 마지막 동기화 { $synced }
link-wrong-key = 오프라인: 이 기계의 키가 서버의 키와 다릅니다 · 미전송 { $unsent }건 · 마지막 동기화 { $synced }
link-version = 오프라인: 서버의 연결 버전이 { $supported }입니다 · 미전송 { $unsent }건 · 마지막 동기화 { $synced }

## 고객 화면
sort = 정렬
sort-slot = 칸
sort-name = 이름
sort-price = 가격
search = 상품 검색
category-all = 전체
items-left = { $count }개 남음
sold-out = 품절
balance = 잔액
accepted-money = 사용 가능
not-accepted-money = 사용 불가 (시험용)
cancel-last = 마지막 구매 취소
return-change = 반환
keys-hint = 키: a s d f = 10 50 100 500 · g = 1,000원 지폐 · 1-9 구매 · c 취소 · x 반환
out-of-service = 판매 중지
out-of-service-hint = 판매할 상품이 없습니다. 관리자: 관리자 버튼을 눌러 로그인한 뒤 상품을 채우고 동전통을 채우세요.

## 고객 안내
inserted = { $money } 투입됨
purchased = { $product } 나왔습니다. 맛있게 드세요!
cancelled = { $product } 구매 취소: { $amount }이 잔액으로 돌아왔습니다
change-returned = 거스름돈: { $amount } ({ $coins })
bill-returned = { $money }를 돌려드렸습니다
bill-and-change-returned = { $money }와 동전 { $amount }({ $coins })를 돌려드렸습니다
thank-you = 감사합니다!
session-timed-out = 시간이 지나 거래를 마쳤습니다. { $text }
insert-more = { $product }를 사려면 { $missing }을 더 넣으세요
change-owed-notice = 기계가 { $amount }을 드리지 못했습니다: 증서를 관리자에게 보여 주세요

## 투입 거절
rejected-unknown = 사용할 수 없습니다: 10, 50, 100, 500원 동전과 1,000원 지폐만 받습니다
rejected-balance-limit = 반환: 잔액은 7,000원을 넘을 수 없습니다
rejected-bill-limit = 반환: 지폐는 5,000원까지만 받습니다
rejected-stacker-full = 반환: 지폐함이 가득 찼습니다. 동전을 사용하세요
rejected-out-of-service = 반환: 판매 중지 상태입니다
rejected-no-change = 반환: 정확한 금액만 받습니다. 거스름돈으로 돌려드릴 수 없습니다

## 미지급 잔돈 증서
ticket-title = 미지급 잔돈 증서
ticket-number = 증서 번호 { $ticket }
ticket-amount = 받을 금액
ticket-machine = 기계
ticket-time = 시각
ticket-claim = 이 증서를 보관하세요. 다음 방문 때 관리자가 전액을 드립니다. 기계에 적힌 번호로 증서 번호를 알려 주셔도 됩니다.
ticket-ok = 확인

## 규칙에 따른 거절
not-installed = 설치되지 않은 기계입니다
already-installed = 이미 설치된 기계입니다
unknown-slot = { $slot }번 칸이 없습니다
sold-out-product = { $product } 품절입니다
cannot-make-change = 거스름돈 { $amount }을 드릴 수 없습니다: 정확한 금액을 넣거나 반환을 누르세요
cannot-refund = 취소할 수 없습니다: { $amount }을 동전으로 돌려드릴 수 없습니다
nothing-to-cancel = 취소할 구매가 없습니다
nothing-to-return = 돌려드릴 잔액이 없습니다
customer-session-active = 고객이 사용 중입니다: 거래가 끝난 뒤에 하세요
admin-required = 먼저 관리자로 로그인하세요
admin-locked = 로그인 실패가 많아 관리자 화면이 { $seconds }초 동안 잠겼습니다
wrong-password = 현재 비밀번호가 틀렸습니다
password-policy = 비밀번호는 8자 이상이고 숫자와 특수문자를 포함해야 합니다. 부족한 것: { $missing }
rule-min-length = 8자 이상
rule-max-length = 256바이트 이하
rule-digit = 숫자
rule-special = 특수문자
over-capacity = { $slot }번 칸에는 { $room }개만 더 넣을 수 있습니다
nothing-to-refill = 모든 칸이 이미 가득 찼습니다
nothing-to-load = 모든 동전통이 이미 가득 찼습니다
not-a-coin = { $money }는 동전통이 없습니다
tube-full = { $money } 동전통에는 { $room }개만 더 넣을 수 있습니다
zero-count = 개수는 0보다 커야 합니다
bad-count = 센 금액은 0에서 { $max } 사이여야 합니다
nothing-to-collect = 수금할 돈이 없습니다
unknown-ticket = 미지급 증서 { $ticket }번이 없습니다
stock-above-capacity = { $slot }번 칸에 { $stock }개가 있어 새 용량보다 많습니다
bad-name = 이름은 1자에서 40자 사이여야 합니다
bad-price = 가격은 10원에서 1,000,000원 사이의 10원 단위여야 합니다
bad-capacity = 한 칸에는 1개에서 1,000개까지 넣을 수 있습니다
bad-category = 분류는 1단계에서 4단계까지의 올바른 이름이어야 합니다
bad-slot = 칸 번호는 1부터 시작하고 한 기계에 64칸까지 있습니다
bad-code = 상품 코드는 1자에서 16자 사이의 영어 대문자, 숫자, '-'입니다
not-recorded = 기록되지 않았습니다: { $problem }
other-problem = { $problem }

## 로그인
login-title = 관리자 로그인
password-placeholder = 관리자 비밀번호
log-in = 로그인
back = 뒤로
failed-attempts = { $count ->
    [0] 5번 실패하면 관리자 화면이 5분 동안 잠깁니다
   *[other] 마지막 로그인 이후 { $count }번 실패 (5번 실패하면 관리자 화면이 5분 동안 잠깁니다)
}
locked-until = 로그인 실패가 많아 잠겼습니다: { $seconds }초 뒤에 다시 시도하세요
login-welcome = 관리자님, 어서 오세요
login-wrong = 비밀번호가 틀렸습니다. 5분 잠금까지 { $left }번 남았습니다.
login-locked = 비밀번호가 틀렸습니다. 관리자 화면이 5분 동안 잠깁니다.
logged-out = 로그아웃했습니다

## 관리자 탭
tab-stock = 재고
tab-cash = 동전과 현금
tab-products = 상품
tab-reports = 보고서
tab-password = 비밀번호
log-out = 로그아웃

## 재고
refill-title = 상품 채우기
fill-slot = { $slot }번 채우기
fill-all-slots = 모든 칸 채우기
refilled = { $slot }번 칸 +{ $added }

## 동전과 현금
tubes-title = 동전통
tube-name = { $value }원 동전통
fill-tube = { $value }원 채우기
load-all-tubes = 모든 동전통 채우기
tube-loaded = { $money } { $count }개를 넣었습니다
collection-title = 수금
collection-expected = 현금함 { $cash_box } + 지폐함 { $stacker } = 예상 { $expected }
counted-placeholder = 센 금액 (원)
record-collection = 수금 기록
enter-counted = 센 현금을 원 단위로 넣으세요 (예: 15000)
confirm-difference = 센 금액 { $counted }, 예상 { $expected }: { $difference }. 다시 세겠습니까, 이대로 기록하겠습니까?
record-anyway = { $counted } 기록
count-again = 다시 세기
collected-exact = { $counted } 수금, 예상과 같습니다
collected-over = { $counted } 수금: { $amount } 초과
collected-short = { $counted } 수금: { $amount } 부족
over = { $amount } 초과
short = { $amount } 부족
history-title = 수금 기록
history-time = 시각
history-expected = 예상
history-counted = 센 금액
history-difference = 초과/부족
history-empty = 아직 수금 기록이 없습니다
owed-title = 고객에게 줄 잔돈: { $amount }
owed-ticket = 증서 { $ticket }번: { $amount } ({ $time })
settle = { $ticket }번 지급
settled = 증서 { $ticket }번 지급 완료 ({ $amount })

## 상품
names-title = 이름과 가격
name-placeholder = 이름
price-placeholder = 가격
save-slot = { $slot }번 저장
price-changed = { $slot }번 칸 가격이 { $price }이 되었습니다
price-changed-remote = { $slot }번 칸 가격이 { $price }이 되었습니다 (대시보드에서)
renamed = { $slot }번 칸 상품이 { $name }이 되었습니다
renamed-remote = { $slot }번 칸 상품이 { $name }이 되었습니다 (대시보드에서)
enter-price = 가격을 10원 단위로 넣으세요
nothing-changed = { $slot }번 칸: 바뀐 것이 없습니다
configure-title = 칸 추가 또는 변경
slot-placeholder = 칸
product-placeholder = 상품 이름
code-placeholder = 코드 (COFFEE)
category-placeholder = 분류 (음료 > 차)
capacity-placeholder = 용량
configure-slot = 칸 설정
configured = { $slot }번 칸 설정: { $name }
numbers-needed = 칸, 가격, 용량은 숫자여야 합니다
categories-title = 분류

## 보고서
daily = 일별
monthly = 월별
report-period = 기간
report-product = 상품
report-count = 판매 수
report-sales = 매출
report-total = 합계
report-empty = 이 기간에 판매가 없습니다
cash-summary = 현금
cash-collected = 수금액
cash-over-short = 초과/부족
cash-owed = 미지급 잔돈

## 비밀번호
password-title = 관리자 비밀번호 바꾸기
current-password = 현재 비밀번호
new-password = 새 비밀번호
password-rules = 8자 이상, 숫자와 특수문자를 포함해야 합니다.
change-password = 비밀번호 바꾸기
password-changed = 비밀번호를 바꿨습니다
remote-refused = 원격 명령 { $id } 거절: { $reason }
