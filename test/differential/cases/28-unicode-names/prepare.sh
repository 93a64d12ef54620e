echo spaces > "file with spaces.txt"
echo unicode > "ünïcödé-名前.txt"
mkdir -p names
echo a > "names/quote'single"
echo b > 'names/quote"double'
echo c > "names/tab	inside"
echo d > "names/back\\slash"
echo e > "names/#hash and \$dollar"
echo f > "names/emoji-🚀"
echo g > "names/$(printf 'long%.0s' $(seq 1 40))"
