export default function RuleEditor() {
  return <p>RuleEditor</p>;
}
