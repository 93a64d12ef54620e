mkdir -p links/sub
echo "linked content" > links/orig
ln links/orig links/same
ln links/orig links/sub/same-in-sub
echo solo > links/solo
